// RuntimeClient: token-level sessions on a Kakeya gRPC runtime (kakeya.v1.RuntimeService) whose
// KV cache stays on the server, so each turn prefills only what was appended. Mirrors the Python
// SDK's RuntimeClient; every failed RPC rejects with its typed KakeyaError.
import { create } from "@bufbuild/protobuf";
import { credentials, Metadata, type ChannelOptions, type Client, type ClientReadableStream, type ServiceError } from "@grpc/grpc-js";
import {
  AppendTokensRequestSchema, CloseSessionRequestSchema, CreateSessionRequestSchema, GenerateRequestSchema,
  GetSessionInfoRequestSchema, type GenerateResponse, type SessionInfo as SessionInfoPb, type SpeculativeStats as StatsPb,
} from "./gen/kakeya/v1/runtime_pb.js";
import { errorFromGrpc } from "./errors.js";
import { RuntimeServiceClient } from "./service.js";

export const DEFAULT_TARGET = "127.0.0.1:50051";

export interface ClientOptions {
  apiKey?: string;          // sent as `authorization: Bearer <key>`
  timeoutMs?: number;       // deadline of unary calls; a generate streams as long as it needs
  channelOptions?: ChannelOptions;
}

export interface GenerateOptions {
  maxTokens: number;
  temperature?: number;     // unset: greedy
  topP?: number;
  topK?: number;
  seed?: number;
  speculativeMethod?: "auto" | "none" | "ngram" | "suffix" | "draft";
  numDraftTokens?: number;
}

export interface SpeculativeStats {
  drafts: number; draftTokens: number; acceptedTokens: number; recoveredTokens: number; bonusTokens: number;
  plainSteps: number; verifySteps: number; acceptedPerPosition: number[];
}

export interface TokensFrame { type: "tokens"; tokenIds: number[]; text: string }

export interface DoneFrame {
  type: "done"; stopReason: string; promptTokens: number; cachedTokens: number; completionTokens: number;
  historyLength: number; timeToFirstTokenS: number; totalS: number; speculative: SpeculativeStats;
}

export type Frame = TokensFrame | DoneFrame;

export interface SessionInfo {
  sessionId: string; clientLabel: string; historyLength: number; kvCachedTokens: number; kvBytes: number;
  idleSeconds: number; busy: boolean; speculative: SpeculativeStats;
}

type Callback = (err: ServiceError | null, resp: unknown) => void;
type Stub = Client & Record<string, (req: unknown, md: Metadata, opts: object, cb?: Callback) => unknown>;

export class RuntimeClient {
  private readonly stub: Stub;
  private readonly metadata = new Metadata();
  private readonly timeoutMs?: number;

  constructor(readonly target: string = DEFAULT_TARGET, options: ClientOptions = {}) {
    this.stub = new RuntimeServiceClient(target, credentials.createInsecure(), options.channelOptions) as Stub;
    if (options.apiKey) {
      this.metadata.set("authorization", `Bearer ${options.apiKey}`);
    }
    this.timeoutMs = options.timeoutMs;
  }

  /** Close the channel; calls in flight fail with Unavailable. */
  close(): void {
    this.stub.close();
  }

  private unary<T>(method: string, name: string, request: unknown): Promise<T> {
    const opts = this.timeoutMs === undefined ? {} : { deadline: Date.now() + this.timeoutMs };
    return new Promise((resolve, reject) => {
      this.stub[method](request, this.metadata, opts, (err, resp) => (err ? reject(errorFromGrpc(err, name)) : resolve(resp as T)));
    });
  }

  /** A new empty session; `eosTokenIds` stop generation in addition to the model's own. */
  async createSession(opts: { eosTokenIds?: number[]; label?: string; kvWindow?: { sink: number; window: number } } = {}): Promise<RuntimeSession> {
    // kvWindow: keep the first `sink` and the last `window` KV positions (window 0: full; unset: the server's)
    const req = create(CreateSessionRequestSchema, {
      eosTokenIds: (opts.eosTokenIds ?? []).map(BigInt), clientLabel: opts.label ?? "", kvWindow: opts.kvWindow,
    });
    const resp = await this.unary<{ sessionId: string }>("createSession", "CreateSession", req);
    return new RuntimeSession(this, resp.sessionId);
  }

  /** Add tokens to a session's history; resolves to the new history length. */
  async append(sessionId: string, tokenIds: number[]): Promise<number> {
    const req = create(AppendTokensRequestSchema, { sessionId, tokenIds: tokenIds.map(BigInt) });
    const resp = await this.unary<{ historyLength: bigint }>("appendTokens", "AppendTokens", req);
    return Number(resp.historyLength);
  }

  async info(sessionId: string): Promise<SessionInfo> {
    const req = create(GetSessionInfoRequestSchema, { sessionId });
    return infoFromPb(await this.unary<SessionInfoPb>("getSessionInfo", "GetSessionInfo", req));
  }

  async closeSession(sessionId: string): Promise<void> {
    await this.unary("closeSession", "CloseSession", create(CloseSessionRequestSchema, { sessionId }));
  }

  /** Continue the session's history: token frames, then one done frame; the new tokens join the
   * history. Leaving the loop early cancels the RPC, and the server keeps what was generated. */
  async *generate(sessionId: string, opts: GenerateOptions): AsyncGenerator<Frame> {
    const req = create(GenerateRequestSchema, {
      sessionId, maxTokens: opts.maxTokens, temperature: opts.temperature, topP: opts.topP, topK: opts.topK,
      seed: opts.seed === undefined ? undefined : BigInt(opts.seed),
      speculative: { method: opts.speculativeMethod ?? "", numDraftTokens: opts.numDraftTokens },
    });
    const call = this.stub.generate(req, this.metadata, {}) as ClientReadableStream<GenerateResponse>;
    try {
      for await (const resp of call) {
        yield frameFromPb(resp as GenerateResponse);
      }
    } catch (e) {
      throw errorFromGrpc(e as ServiceError, "Generate");
    } finally {
      call.cancel(); // a no-op once the stream ended; otherwise the consumer left early
    }
  }
}

/** A session bound to its client: the same calls without repeating the id. */
export class RuntimeSession {
  constructor(readonly client: RuntimeClient, readonly id: string) {}

  append(tokenIds: number[]): Promise<number> {
    return this.client.append(this.id, tokenIds);
  }

  generate(opts: GenerateOptions): AsyncGenerator<Frame> {
    return this.client.generate(this.id, opts);
  }

  info(): Promise<SessionInfo> {
    return this.client.info(this.id);
  }

  close(): Promise<void> {
    return this.client.closeSession(this.id);
  }
}

// the server always sets `speculative` on done frames and session info (rpc/convert.py)
function statsFromPb(s: StatsPb): SpeculativeStats {
  return {
    drafts: Number(s.drafts), draftTokens: Number(s.draftTokens), acceptedTokens: Number(s.acceptedTokens),
    recoveredTokens: Number(s.recoveredTokens), bonusTokens: Number(s.bonusTokens), plainSteps: Number(s.plainSteps),
    verifySteps: Number(s.verifySteps), acceptedPerPosition: s.acceptedPerPosition.map(Number),
  };
}

function frameFromPb(resp: GenerateResponse): Frame {
  const f = resp.frame;
  if (f.case === "tokens") {
    return { type: "tokens", tokenIds: f.value.tokenIds.map(Number), text: f.value.text };
  }
  const d = f.value!; // the server sends tokens or done, nothing else
  return {
    type: "done", stopReason: d.stopReason, promptTokens: Number(d.promptTokens), cachedTokens: Number(d.cachedTokens),
    completionTokens: Number(d.completionTokens), historyLength: Number(d.historyLength),
    timeToFirstTokenS: d.timeToFirstTokenS, totalS: d.totalS, speculative: statsFromPb(d.speculative!),
  };
}

function infoFromPb(i: SessionInfoPb): SessionInfo {
  return {
    sessionId: i.sessionId, clientLabel: i.clientLabel, historyLength: Number(i.historyLength),
    kvCachedTokens: Number(i.kvCachedTokens), kvBytes: Number(i.kvBytes), idleSeconds: i.idleSeconds, busy: i.busy,
    speculative: statsFromPb(i.speculative!),
  };
}
