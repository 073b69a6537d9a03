export { DEFAULT_TARGET, RuntimeClient, RuntimeSession } from "./client.js";
export type { ClientOptions, DoneFrame, Frame, GenerateOptions, SessionInfo, SpeculativeStats, TokensFrame } from "./client.js";
export {
  errorFromGrpc, InvalidRequest, KakeyaError, Overloaded, ServerError, SessionBusy, SessionNotFound, TooManySessions,
  Unauthenticated, Unavailable,
} from "./errors.js";
