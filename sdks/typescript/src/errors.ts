// Typed errors, mirroring the Python SDK (kakeya.errors): one class per failure a caller handles
// differently, mapped once from the gRPC status the server sends (docs/api.md, the error table).
import { status, type ServiceError } from "@grpc/grpc-js";

export class KakeyaError extends Error {
  /** The gRPC status code name (e.g. "NOT_FOUND"), when the error came from an RPC. */
  readonly grpcCode?: string;

  constructor(message: string, grpcCode?: string) {
    super(message);
    this.name = new.target.name;
    this.grpcCode = grpcCode;
  }
}

export class InvalidRequest extends KakeyaError {}
export class SessionNotFound extends KakeyaError {}
export class SessionBusy extends KakeyaError {}
export class Unauthenticated extends KakeyaError {}
export class Overloaded extends KakeyaError {}
export class TooManySessions extends Overloaded {}
export class Unavailable extends KakeyaError {}
export class ServerError extends KakeyaError {}

const BY_STATUS: Partial<Record<status, typeof KakeyaError>> = {
  [status.INVALID_ARGUMENT]: InvalidRequest,
  [status.NOT_FOUND]: SessionNotFound, // the only NOT_FOUND RuntimeService sends
  [status.FAILED_PRECONDITION]: SessionBusy,
  [status.UNAUTHENTICATED]: Unauthenticated,
  [status.RESOURCE_EXHAUSTED]: Overloaded,
  [status.UNAVAILABLE]: Unavailable,
  [status.INTERNAL]: ServerError,
};

/** The typed error for a failed RPC; `method` disambiguates RESOURCE_EXHAUSTED from CreateSession. */
export function errorFromGrpc(e: Pick<ServiceError, "code" | "details" | "message">, method?: string): KakeyaError {
  let cls = BY_STATUS[e.code] ?? KakeyaError;
  if (cls === Overloaded && method === "CreateSession") {
    cls = TooManySessions;
  }
  return new cls(e.details || e.message, status[e.code]);
}
