"""kakeya.v1 RuntimeService end to end: a real grpc.aio server on 127.0.0.1, generated stubs, tiny Qwen3."""
from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from grpc_server import LiveGrpc
from inference_engine.config import EngineConfig
from inference_engine.engine.async_engine import AsyncEngine
from inference_engine.engine.llm import LLM
from inference_engine.rpc.pb.kakeya.v1 import runtime_pb2 as pb
from inference_engine.rpc.pb.kakeya.v1 import runtime_pb2_grpc as pb_grpc
from inference_engine.types import SamplingParams, SpeculativeParams

TURN = [151644, 872, 198, 9707, 11, 1879, 30, 151645, 198, 151644, 77091, 198]


@pytest.fixture(scope="module")
def server(tiny_loaded):
    engine = AsyncEngine(LLM(tiny_loaded, EngineConfig()))
    with LiveGrpc(engine) as live:
        yield live
    engine.shutdown()


@pytest.fixture()
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.RuntimeServiceStub(channel)


def _session(stub, tokens=TURN, **kw) -> str:
    sid = stub.CreateSession(pb.CreateSessionRequest(client_label="test", **kw)).session_id
    if tokens:
        stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=tokens))
    return sid


def _generate(stub, sid, **kw):
    frames = list(stub.Generate(pb.GenerateRequest(session_id=sid, **kw)))
    tokens = [t for f in frames[:-1] for t in f.tokens.token_ids]
    text = "".join(f.tokens.text for f in frames[:-1])
    assert frames[-1].WhichOneof("frame") == "done"
    return tokens, text, frames[-1].done


def test_session_flow_matches_the_engine(stub, server, tiny_loaded):
    sid = _session(stub)
    tokens, text, done = _generate(stub, sid, max_tokens=10)
    ref = LLM(tiny_loaded, EngineConfig()).generate(TURN, SamplingParams(max_tokens=10))
    assert tokens == ref.token_ids and text == ref.text
    assert done.stop_reason == ref.finish_reason.value and done.completion_tokens == len(tokens)
    assert done.prompt_tokens == len(TURN) and done.history_length == len(TURN) + len(tokens)
    assert done.total_s >= done.time_to_first_token_s > 0 and done.speculative.verify_steps >= 1
    # turn 2 prefills only the appended tokens plus the last generated one
    n = stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=TURN)).history_length
    assert n == len(TURN) * 2 + len(tokens)
    _, _, done2 = _generate(stub, sid, max_tokens=4)
    assert done2.prompt_tokens - done2.cached_tokens == len(TURN) + 1
    info = stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=sid))
    assert info.client_label == "test" and info.history_length == n + done2.completion_tokens
    assert info.kv_cached_tokens == info.history_length - 1 and info.kv_bytes > 0 and not info.busy
    assert info.speculative.verify_steps >= 2
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid))
    with pytest.raises(grpc.RpcError) as e:
        stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=sid))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_sampling_parameters_are_honoured(stub, tiny_loaded):
    llm = LLM(tiny_loaded, EngineConfig())
    kw = dict(max_tokens=8, temperature=0.9, top_p=0.9, top_k=40, seed=11)
    a, _, _ = _generate(stub, _session(stub), **kw)
    b, _, _ = _generate(stub, _session(stub), **kw)
    ref = llm.generate(TURN, SamplingParams(max_tokens=8, temperature=0.9, top_p=0.9, top_k=40, seed=11))
    assert a == b == ref.token_ids
    spec = pb.SpeculativeOptions(method="ngram", num_draft_tokens=4)
    c, _, done = _generate(stub, _session(stub), max_tokens=8, speculative=spec)
    assert c == llm.generate(TURN, SamplingParams(max_tokens=8), SpeculativeParams("none", 0)).token_ids


def test_session_eos_tokens_stop_generation(stub, tiny_loaded):
    ref = LLM(tiny_loaded, EngineConfig()).generate(TURN, SamplingParams(max_tokens=10, ignore_eos=True)).token_ids
    sid = _session(stub, eos_token_ids=[ref[3]])
    tokens, _, done = _generate(stub, sid, max_tokens=10)
    assert tokens == ref[: ref.index(ref[3]) + 1] and done.stop_reason == "stop"


def _code(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    assert e.value.details()  # every refusal says why
    return e.value.code()


def test_error_statuses(stub):
    nf = "no-such-session"
    assert _code(lambda: stub.AppendTokens(pb.AppendTokensRequest(session_id=nf, token_ids=[1]))) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: _generate(stub, nf, max_tokens=1)) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: stub.CloseSession(pb.CloseSessionRequest(session_id=nf))) == grpc.StatusCode.NOT_FOUND
    sid = _session(stub, tokens=None)
    assert _code(lambda: _generate(stub, sid, max_tokens=4)) == grpc.StatusCode.INVALID_ARGUMENT  # nothing appended
    stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=TURN))
    for bad in ([5, -1], [151936], [1, 2, 10**9]):
        assert _code(lambda: stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=bad))) == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=sid)).history_length == len(TURN)  # unchanged
    assert _code(lambda: _generate(stub, sid, max_tokens=0)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: _generate(stub, sid, max_tokens=2000)) == grpc.StatusCode.INVALID_ARGUMENT  # past the context
    bad_spec = pb.SpeculativeOptions(method="telepathy")
    assert _code(lambda: _generate(stub, sid, max_tokens=2, speculative=bad_spec)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: stub.CreateSession(pb.CreateSessionRequest(eos_token_ids=[-3]))) == grpc.StatusCode.INVALID_ARGUMENT
    # the hostile-input rows of the gRPC edge: NaN and inf sampling values, a 1 MiB label, too many
    # stop tokens, a history past the context (the tiny model's is 1024)
    for params in (dict(temperature=float("nan")), dict(temperature=float("inf")), dict(top_p=float("nan"))):
        assert _code(lambda: _generate(stub, sid, max_tokens=2, **params)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: stub.CreateSession(pb.CreateSessionRequest(client_label="x" * (1 << 20)))) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: stub.CreateSession(pb.CreateSessionRequest(eos_token_ids=[1] * 65))) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=[1] * 100_000))) \
        == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=sid)).history_length == len(TURN)  # unchanged
    tokens, _, _ = _generate(stub, sid, max_tokens=3)  # the session still works after every refusal
    assert len(tokens) == 3 or tokens[-1] in (151645, 151643)


def test_busy_session_and_cancel_mid_stream(stub):
    sid = _session(stub)
    call = stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=1000))
    first = next(call)  # running now
    assert first.tokens.token_ids
    assert _code(lambda: _generate(stub, sid, max_tokens=2)) == grpc.StatusCode.FAILED_PRECONDITION
    assert _code(lambda: stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=[1]))) == grpc.StatusCode.FAILED_PRECONDITION
    call.cancel()
    for _ in range(200):  # the abort reaches the engine within a step
        info = stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=sid))
        if not info.busy:
            break
        threading.Event().wait(0.02)
    assert not info.busy and len(TURN) < info.history_length < len(TURN) + 1000
    assert info.kv_cached_tokens == info.history_length - 1
    tokens, _, _ = _generate(stub, sid, max_tokens=2)
    assert len(tokens) >= 1


def test_capacity_and_full_queue_are_resource_exhausted(tiny_loaded):
    engine = AsyncEngine(LLM(tiny_loaded, EngineConfig(max_sessions=3, max_running=1, max_waiting=1)))
    with LiveGrpc(engine) as live, grpc.insecure_channel(live.target) as channel:
        stub = pb_grpc.RuntimeServiceStub(channel)
        a, b, c = _session(stub), _session(stub), _session(stub)
        assert _code(lambda: stub.CreateSession(pb.CreateSessionRequest())) == grpc.StatusCode.RESOURCE_EXHAUSTED
        running = stub.Generate(pb.GenerateRequest(session_id=a, max_tokens=900))
        next(running)  # a runs
        waiting = stub.Generate(pb.GenerateRequest(session_id=b, max_tokens=2))
        for _ in range(500):
            if engine.num_waiting == 1:
                break
            threading.Event().wait(0.01)
        assert _code(lambda: _generate(stub, c, max_tokens=2)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        running.cancel()
        assert list(waiting)[-1].done.completion_tokens >= 1  # the queued one still completes
        stub.CloseSession(pb.CloseSessionRequest(session_id=c))
        assert _session(stub)  # closing one freed a slot
    engine.shutdown()


def test_health_and_reflection(server):
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "kakeya.v1.RuntimeService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert {"kakeya.v1.RuntimeService", "grpc.health.v1.Health"} <= names
        req = reflection_pb2.ServerReflectionRequest(file_containing_symbol="kakeya.v1.RuntimeService")
        reply = next(refl.ServerReflectionInfo(iter([req])))
        assert reply.file_descriptor_response.file_descriptor_proto


def test_api_keys_unauthenticated(tiny_loaded):
    engine = AsyncEngine(LLM(tiny_loaded, EngineConfig()))
    with LiveGrpc(engine, api_keys=("k1", "k2")) as live, grpc.insecure_channel(live.target) as channel:
        stub = pb_grpc.RuntimeServiceStub(channel)
        assert _code(lambda: stub.CreateSession(pb.CreateSessionRequest())) == grpc.StatusCode.UNAUTHENTICATED
        bad = (("authorization", "Bearer nope"),)
        assert _code(lambda: stub.CreateSession(pb.CreateSessionRequest(), metadata=bad)) == grpc.StatusCode.UNAUTHENTICATED
        sid = stub.CreateSession(pb.CreateSessionRequest(), metadata=(("authorization", "Bearer k2"),)).session_id
        assert _code(lambda: list(stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=1)))) == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel)  # health stays public
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    engine.shutdown()


@pytest.mark.real_model
def test_generate_never_blocks_the_event_loop(smol_loaded):
    """While SmolLM2 generates (~15 tokens/s here) on one session, other RPCs on the same server
    answer at once: forward passes run on the engine thread, not on the gRPC event loop."""
    engine = AsyncEngine(LLM(smol_loaded, EngineConfig()))
    with LiveGrpc(engine) as live, grpc.insecure_channel(live.target) as channel:
        stub = pb_grpc.RuntimeServiceStub(channel)
        busy = _session(stub, tokens=[1, 9690, 198, 28120, 905, 30])
        other = _session(stub, tokens=[1])
        call = stub.Generate(pb.GenerateRequest(session_id=busy, max_tokens=300))
        next(call)
        for _ in range(5):  # each answered while the generate is still streaming
            assert stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=other), timeout=5).history_length == 1
            assert stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=busy), timeout=5).busy
        call.cancel()
    engine.shutdown()


@pytest.mark.parametrize("method,streaming", [("CreateSession", False), ("AppendTokens", False), ("Generate", True)])
def test_an_undecodable_message_is_invalid_argument(server, method, streaming):
    """Bytes that are not the method's protobuf message (a length running past the end) are the
    client's mistake: INVALID_ARGUMENT naming the method, and the server keeps serving."""
    truncated = b"\x0a\x7f\x01"  # field 1, length 127, one byte present
    with grpc.insecure_channel(server.target) as channel:
        path = f"/kakeya.v1.RuntimeService/{method}"
        call = (channel.unary_stream if streaming else channel.unary_unary)(path, request_serializer=lambda b: b,
                                                                              response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            out = call(truncated, timeout=10)
            list(out) if streaming else out
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and method in e.value.details()
        assert pb_grpc.RuntimeServiceStub(channel).CreateSession(pb.CreateSessionRequest()).session_id
