// @kakeya/runtime against a real `kakeya serve` (SmolLM2-135M, CPU): sessions, streaming generate,
// cancellation, and every typed error the server can send.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { status } from "@grpc/grpc-js";
import {
  errorFromGrpc, InvalidRequest, KakeyaError, Overloaded, RuntimeClient, ServerError, SessionBusy, SessionNotFound,
  TooManySessions, Unauthenticated, Unavailable,
} from "../dist/index.js";
import { startServer } from "./server.js";

// ChatML ids of SmolLM2's vocabulary (any ids below its 49,152 are valid history)
const PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 2, 198, 1, 4093, 198, 19556, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198];
let server;
let client;

before(async () => {
  server = await startServer();
  client = new RuntimeClient(server.grpcTarget, { apiKey: server.key, timeoutMs: 60_000 });
});

after(async () => {
  client.close();
  await server.stop();
});

async function collect(gen) {
  const frames = [];
  for await (const f of gen) frames.push(f);
  return frames;
}

test("a session: append, generate, a cached second turn, info, close", async () => {
  const s = await client.createSession({ label: "ts-sdk", eosTokenIds: [2] });
  assert.match(s.id, /^sess-/);
  assert.equal(await s.append(PROMPT), PROMPT.length);
  const frames = await collect(s.generate({ maxTokens: 8, speculativeMethod: "ngram", numDraftTokens: 3 }));
  const done = frames.at(-1);
  const tokens = frames.slice(0, -1).flatMap((f) => (f.type === "tokens" ? f.tokenIds : []));
  assert.equal(done.type, "done");
  assert.ok(["stop", "length"].includes(done.stopReason));
  assert.equal(done.completionTokens, tokens.length);
  assert.equal(done.historyLength, PROMPT.length + tokens.length);
  assert.equal(done.promptTokens, PROMPT.length);
  assert.ok(frames.slice(0, -1).every((f) => f.type === "tokens" && typeof f.text === "string"));
  assert.ok(done.totalS >= done.timeToFirstTokenS && done.speculative.verifySteps >= 1);

  assert.equal(await s.append([198]), done.historyLength + 1);
  const second = (await collect(s.generate({ maxTokens: 2 }))).at(-1);
  assert.ok(second.cachedTokens > 0, "the second turn reuses the session's KV");

  const info = await s.info();
  assert.equal(info.sessionId, s.id);
  assert.equal(info.clientLabel, "ts-sdk");
  assert.equal(info.historyLength, second.historyLength);
  assert.ok(info.kvCachedTokens > 0 && info.kvBytes > 0 && !info.busy);
  assert.ok(Array.isArray(info.speculative.acceptedPerPosition));
  await s.close();
  await assert.rejects(s.info(), SessionNotFound);
});

test("a session created with a KV window holds fewer KV bytes than a full one", async () => {
  const bytes = [];
  for (const opts of [{ kvWindow: { sink: 2, window: 4 } }, {}]) {
    const s = await client.createSession(opts);
    await s.append(PROMPT);
    await collect(s.generate({ maxTokens: 12, speculativeMethod: "none" }));
    bytes.push((await s.info()).kvBytes);
    await s.close();
  }
  assert.ok(0 < bytes[0] && bytes[0] < bytes[1], `windowed ${bytes[0]} vs full ${bytes[1]}`);
});

test("seeded sampling is reproducible across sessions", async () => {
  const run = async () => {
    const s = await client.createSession();
    await client.append(s.id, PROMPT);
    const frames = await collect(client.generate(s.id, { maxTokens: 6, temperature: 0.9, topP: 0.95, topK: 40, seed: 7 }));
    await client.closeSession(s.id);
    return frames.filter((f) => f.type === "tokens").flatMap((f) => f.tokenIds);
  };
  assert.deepEqual(await run(), await run());
});

test("leaving the loop cancels the generate; a second one meanwhile is SessionBusy", async () => {
  const s = await client.createSession();
  await s.append(PROMPT);
  const long = s.generate({ maxTokens: 400 });
  assert.equal((await long.next()).value.type, "tokens");
  await assert.rejects(collect(s.generate({ maxTokens: 1 })), SessionBusy);
  await long.return(undefined); // cancels the RPC: the server ends the generation within a step
  let info = await s.info();
  for (let i = 0; i < 100 && info.busy; i++) {
    await new Promise((r) => setTimeout(r, 20));
    info = await s.info();
  }
  assert.ok(!info.busy && info.historyLength < PROMPT.length + 400);
  await s.close();
});

test("typed errors from the server", async () => {
  const anonymous = new RuntimeClient(server.grpcTarget);
  await assert.rejects(anonymous.createSession(), Unauthenticated);
  anonymous.close();
  await assert.rejects(client.append("sess-missing", [1]), SessionNotFound);
  const s = await client.createSession();
  await assert.rejects(s.append([10 ** 9]), (e) => e instanceof InvalidRequest && e.grpcCode === "INVALID_ARGUMENT");
  await s.append(PROMPT);
  await assert.rejects(collect(s.generate({ maxTokens: 0 })), InvalidRequest);
  await s.close();
  const hurried = new RuntimeClient(server.grpcTarget, { apiKey: server.key, timeoutMs: 0 });
  await assert.rejects(hurried.createSession(), (e) => e instanceof KakeyaError && e.grpcCode === "DEADLINE_EXCEEDED");
  hurried.close();
});

test("errorFromGrpc maps each status once", () => {
  const table = [
    [status.INVALID_ARGUMENT, InvalidRequest], [status.NOT_FOUND, SessionNotFound], [status.FAILED_PRECONDITION, SessionBusy],
    [status.UNAUTHENTICATED, Unauthenticated], [status.RESOURCE_EXHAUSTED, Overloaded], [status.UNAVAILABLE, Unavailable],
    [status.INTERNAL, ServerError], [status.UNKNOWN, KakeyaError],
  ];
  for (const [code, cls] of table) {
    const e = errorFromGrpc({ code, details: "why", message: "raw" });
    assert.equal(e.constructor, cls);
    assert.equal(e.message, "why");
    assert.equal(e.name, cls.name);
  }
  const full = errorFromGrpc({ code: status.RESOURCE_EXHAUSTED, details: "", message: "capacity" }, "CreateSession");
  assert.ok(full instanceof TooManySessions && full instanceof Overloaded && full.message === "capacity");
});
