"""The Python SDK (sdks/python, package `kakeya`) end to end against real servers: uvicorn for
HTTP and grpc.aio for the runtime, over one AsyncEngine on the tiny Qwen3. Sync and async."""
from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

from grpc_server import LiveGrpc
from http_server import LiveServer, free_port
from inference_engine.config import EngineConfig, ServerConfig
from inference_engine.engine.async_engine import AsyncEngine
from inference_engine.engine.llm import LLM
from inference_engine.http.app import ServerState, create_app
from kakeya import (
    AsyncClient, AsyncRuntimeClient, ChatDelta, Client, ContextLengthExceeded, GenerateDone, InvalidRequest,
    KakeyaError, Message, ModelNotFound, Overloaded, PayloadTooLarge, RuntimeClient, ServerError, SessionBusy, SessionNotFound,
    TokenChunk, TooManySessions, Unauthenticated, Unavailable,
)

KEY = "secret"
TURN = [151644, 872, 198, 9707, 11, 1879, 30, 151645, 198, 151644, 77091, 198]  # <|im_start|>user\nHello, world?...
CHAT = [Message("system", "Be brief."), {"role": "user", "content": "Hello there, how are you?"}]
CURVE = (1.0, 1.6, 1.62, 1.65, 1.7, 1.72, 1.75, 1.78, 1.8)  # pinned: measuring it costs seconds per engine


def _engine(tiny_loaded, **kw) -> AsyncEngine:
    return AsyncEngine(LLM(tiny_loaded, EngineConfig(cost_curve=CURVE, **kw)))


@pytest.fixture(scope="module")
def servers(tiny_loaded):
    """(HTTP base url, gRPC target): both edges over one engine, both requiring KEY."""
    engine = _engine(tiny_loaded)
    app = create_app(ServerState(ServerConfig(api_keys=(KEY,)), engine))
    with LiveServer(app) as http, LiveGrpc(engine, api_keys=(KEY,)) as rpc:
        yield http.url, rpc.target
    engine.shutdown()


@pytest.fixture()
def client(servers):
    with Client(servers[0], api_key=KEY) as c:
        yield c


@pytest.fixture()
def runtime(servers):
    with RuntimeClient(servers[1], api_key=KEY) as rc:
        yield rc


def _wait_idle(info_fn, seconds: float = 5.0):
    """Poll a session's info until it is not busy (a cancel reaches the engine within a step)."""
    deadline = time.monotonic() + seconds
    info = info_fn()
    while info.busy and time.monotonic() < deadline:
        time.sleep(0.02)
        info = info_fn()
    return info


# -- HTTP ------------------------------------------------------------------------------------


def test_chat_stream_equals_whole_chat(client):
    r = client.chat(CHAT, max_tokens=12, temperature=0, ignore_eos=True)  # ignore_eos: an **extra field
    assert r.id.startswith("chatcmpl-") and r.model == client.models()[0] and len(client.models()) == 1
    assert r.finish_reason == "length" and r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12 and r.usage.speculative["verify_steps"] >= 1
    assert (r.content or "") + (r.reasoning_content or "")  # 12 tokens of text came back
    deltas = list(client.chat_stream(CHAT, max_tokens=12, temperature=0, ignore_eos=True))
    assert all(isinstance(d, ChatDelta) for d in deltas) and len(deltas) >= 3
    assert "".join(d.content for d in deltas) == (r.content or "")
    assert "".join(d.reasoning_content for d in deltas) == (r.reasoning_content or "")
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 12
    assert all(d.usage is None for d in deltas[:-1])
    # speculation is lossless and the `speculative` shorthand reaches the server
    spec = client.chat(CHAT, max_tokens=12, temperature=0, ignore_eos=True, speculative={"method": "ngram"})
    assert spec.content == r.content and spec.reasoning_content == r.reasoning_content
    assert client.health() is True


def test_completions_return_token_ids_and_match_grpc(client, runtime):
    r = client.complete(TURN, max_tokens=6, temperature=0, return_token_ids=True)
    assert r.id.startswith("cmpl-") and r.token_ids and len(r.token_ids) == r.usage.completion_tokens <= 6
    assert r.usage.prompt_tokens == len(TURN) and r.finish_reason in ("stop", "length")
    with runtime.create_session() as s:  # the same greedy continuation over gRPC
        s.append(TURN)
        g = s.generate_all(6, temperature=0)
    assert g.token_ids == r.token_ids and g.text == r.text
    plain = client.complete("Once upon a time", max_tokens=3, temperature=0)
    assert plain.token_ids is None and plain.usage.completion_tokens <= 3 and plain.text


def test_chat_session_three_turns_reuses_kv_and_is_deleted(client):
    with client.session() as s:
        sid = s.session_id
        results = [s.send(f"Turn {i}: tell me more.", max_tokens=6, temperature=0) for i in range(3)]
        info = s.info()
        assert info.id == sid and not info.busy and info.kv_cached_tokens == info.history_length - 1
        assert info.history_length == results[-1].usage.prompt_tokens + results[-1].usage.completion_tokens
    assert [m["role"] for m in s.messages] == ["user", "assistant"] * 3
    assert results[0].usage.cached_tokens == 0  # a new session starts cold
    for prev, cur in zip(results, results[1:]):
        assert cur.usage.cached_tokens >= prev.usage.prompt_tokens  # the whole previous prompt was kept
    with pytest.raises(SessionNotFound):
        client.get_session(sid)


def test_get_and_delete_session(client):
    r = client.complete(TURN, max_tokens=4, temperature=0, session_id="sdk-get-del")
    info = client.get_session("sdk-get-del")
    assert info.history_length == len(TURN) + r.usage.completion_tokens and info.busy is False
    assert info.kv_bytes > 0 and 0 <= info.idle_seconds < 5 and info.speculative["verify_steps"] >= 1
    client.delete_session("sdk-get-del")
    with pytest.raises(SessionNotFound) as e:
        client.get_session("sdk-get-del")
    assert e.value.status == 404 and e.value.code == "session_not_found"
    with pytest.raises(SessionNotFound):
        client.delete_session("sdk-get-del")


def test_async_http_client(servers):
    async def main() -> None:
        async with AsyncClient(servers[0], api_key=KEY) as c:
            assert await c.health() and len(await c.models()) == 1
            whole = await c.chat(CHAT, max_tokens=8, temperature=0, ignore_eos=True)
            deltas = [d async for d in c.chat_stream(CHAT, max_tokens=8, temperature=0, ignore_eos=True)]
            assert "".join(d.content for d in deltas) == (whole.content or "")
            assert deltas[-1].usage.completion_tokens == whole.usage.completion_tokens == 8
            comp = await c.complete(TURN, max_tokens=4, temperature=0, return_token_ids=True)
            assert len(comp.token_ids) == comp.usage.completion_tokens >= 1
            async with c.session("sdk-async-chat") as s:
                first = await s.send("Hi!", max_tokens=4, temperature=0)
                second = await s.send("Again?", max_tokens=4, temperature=0)
                assert (await s.info()).history_length > second.usage.prompt_tokens
            assert second.usage.cached_tokens >= first.usage.prompt_tokens > 0
            with pytest.raises(SessionNotFound):
                await c.get_session("sdk-async-chat")
            with pytest.raises(ModelNotFound):
                await c.chat(CHAT, model="gpt-4o", max_tokens=2)

    asyncio.run(main())


def test_http_errors(servers, client):
    for key in ("wrong", None):
        with Client(servers[0], api_key=key) as bad, pytest.raises(Unauthenticated) as e:
            bad.models()
        assert e.value.status == 401 and e.value.code == "invalid_api_key"
    with pytest.raises(SessionNotFound) as e:
        client.get_session("never-made")
    assert e.value.status == 404
    with pytest.raises(InvalidRequest) as e:
        client.complete([5, -1], max_tokens=2)
    assert type(e.value) is InvalidRequest and e.value.status == 400 and e.value.param == "prompt"
    with pytest.raises(ContextLengthExceeded) as e:
        client.complete(TURN, max_tokens=2000)
    assert e.value.code == "context_length_exceeded" and e.value.param == "max_tokens"
    with pytest.raises(ModelNotFound) as e:
        client.chat(CHAT, model="no-such-model", max_tokens=2)
    assert e.value.status == 404 and e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(InvalidRequest) as e:
        client.chat(CHAT, max_tokens=2, speculative="telepathy")
    assert e.value.param == "speculative.method"


def test_http_busy_session_is_session_busy(client):
    stream = client.chat_stream(CHAT, max_tokens=900, temperature=0, ignore_eos=True, session_id="sdk-busy")
    next(stream), next(stream)  # the role chunk, then generated text: the session is checked out
    with pytest.raises(SessionBusy) as e:
        client.chat(CHAT, max_tokens=2, session_id="sdk-busy")
    assert e.value.status == 409 and e.value.code == "session_busy"
    stream.close()  # closing the stream aborts the generation on the server
    info = _wait_idle(lambda: client.get_session("sdk-busy"))
    assert not info.busy and info.history_length < 900
    client.delete_session("sdk-busy")


def test_capacity_errors(tiny_loaded):
    """Queue full and session capacity, over both edges (no API key on this server)."""
    engine = _engine(tiny_loaded, max_running=1, max_waiting=0, max_sessions=1)
    long = {"prompt": TURN, "max_tokens": 900, "ignore_eos": True, "stream": True}
    with LiveServer(create_app(ServerState(ServerConfig(), engine))) as http, LiveGrpc(engine) as rpc, \
            Client(http.url) as c, RuntimeClient(rpc.target) as rc, httpx.Client(base_url=http.url, timeout=30) as h, \
            h.stream("POST", "/v1/completions", json=long):  # holds the one running slot
        deadline = time.time() + 10
        while engine.num_running < 1 and time.time() < deadline:
            time.sleep(0.02)
        with pytest.raises(Overloaded) as e:
            c.complete(TURN, max_tokens=2)
        assert type(e.value) is Overloaded and e.value.status == 429 and e.value.retry_after == 1.0
        s = rc.create_session()
        with pytest.raises(TooManySessions) as e:
            rc.create_session()
        assert e.value.grpc_code == "RESOURCE_EXHAUSTED" and e.value.status is None
        s.append(TURN)
        with pytest.raises(Overloaded) as e:
            s.generate_all(2)
        assert type(e.value) is Overloaded
        s.close()
        with pytest.raises(SessionNotFound):
            s.info()
    engine.shutdown()
    engine = _engine(tiny_loaded, max_sessions=1)  # a queue with room: the session limit is what refuses
    with LiveServer(create_app(ServerState(ServerConfig(), engine))) as http, Client(http.url) as c:
        c.chat(CHAT, max_tokens=2, session_id="the-one")
        with pytest.raises(TooManySessions) as e:
            c.chat(CHAT, max_tokens=2, session_id="one-too-many")
        assert e.value.code == "too_many_sessions" and e.value.retry_after == 1.0
    engine.shutdown()


def test_unavailable_and_payload_too_large():
    with LiveServer(create_app(ServerState(ServerConfig(max_body_bytes=1024)))) as http, Client(http.url) as c:
        assert c.health() is False  # no engine attached: the model is "loading"
        with pytest.raises(Unavailable) as e:
            c.models()
        assert e.value.status == 503 and e.value.code == "engine_unavailable"
        with pytest.raises(PayloadTooLarge) as e:
            c.chat([{"role": "user", "content": "x" * 2000}])
        assert e.value.status == 413
    closed = f"127.0.0.1:{free_port()}"
    with Client(f"http://{closed}") as c:
        assert c.health() is False
        with pytest.raises(Unavailable):
            c.models()
    with RuntimeClient(closed, timeout=10) as rc, pytest.raises(Unavailable) as e:
        rc.create_session()
    assert e.value.grpc_code == "UNAVAILABLE"


def test_keepalives_skipped_and_error_inside_a_stream_is_raised_typed(tiny_loaded):
    """Keep-alive comments are ignored. An error after the 200 headers travels as an SSE `error`
    event: here a real failing step (the running request's KV buffers cut to the wrong width, so
    the next forward raises), which fails that request alone."""
    engine = _engine(tiny_loaded)
    config = ServerConfig(keepalive_seconds=0.05)  # `: ping` comments between events, to be skipped
    with LiveServer(create_app(ServerState(config, engine))) as http, Client(http.url) as c:
        kw = dict(max_tokens=40, temperature=0, ignore_eos=True)
        with httpx.stream("POST", http.url + "/v1/chat/completions", json={
                "messages": [Message("user", "Hi").to_dict()], "stream": True, **kw}) as raw:
            assert any(line.startswith(":") for line in raw.iter_lines())  # the pings really are there
        streamed = "".join(d.content for d in c.chat_stream([Message("user", "Hi")], **kw))
        assert streamed == c.chat([Message("user", "Hi")], **kw).content
        with pytest.raises(ServerError) as e:
            for _ in c.chat_stream(CHAT, max_tokens=500, ignore_eos=True, temperature=0):
                break_running_cache(engine)
        assert e.value.status is None and e.value.code == "engine_step_failed"  # in-band: no HTTP status
        assert c.chat(CHAT, max_tokens=4).content is not None  # the engine kept serving
    engine.shutdown()


def break_running_cache(engine) -> None:
    """A real fault in the next forward: each running request's key buffers lose their last dimension."""
    def job() -> None:
        for r in engine.core.scheduler.running:
            if r.cache is not None and r.cache.keys:
                r.cache.keys = [k[..., :1] for k in r.cache.keys]

    engine._call(job).result(10)


# -- gRPC ------------------------------------------------------------------------------------


def test_grpc_session_flow(runtime):
    with runtime.create_session(label="sdk") as s:
        assert s.append(TURN) == len(TURN)
        frames = list(s.generate(8, temperature=0))
        chunks, done = frames[:-1], frames[-1]
        assert all(isinstance(f, TokenChunk) for f in chunks) and isinstance(done, GenerateDone)
        tokens = [t for c in chunks for t in c.token_ids]
        assert 1 <= len(tokens) == done.completion_tokens <= 8 and done.stop_reason in ("stop", "length")
        assert done.prompt_tokens == len(TURN) and done.cached_tokens == 0
        assert done.history_length == len(TURN) + len(tokens) and done.total_s >= done.time_to_first_token_s > 0
        # turn 2 reuses the KV of everything but the last generated token
        assert s.append(TURN) == done.history_length + len(TURN)
        turn2 = s.generate_all(4, temperature=0, speculative_method="ngram", num_draft_tokens=4)
        assert turn2.done.cached_tokens == done.history_length - 1
        info = s.info()
        assert info.session_id == s.session_id and info.label == "sdk" and not info.busy
        assert info.history_length == turn2.done.history_length and info.kv_cached_tokens == info.history_length - 1
        assert info.kv_bytes > 0 and info.speculative.verify_steps >= 2
        sid = s.session_id
    with runtime.create_session() as twin:  # same history, greedy: the same tokens
        twin.append(TURN)
        again = twin.generate_all(8, temperature=0)
    assert again.token_ids == tokens and again.text == "".join(c.text for c in chunks)
    with pytest.raises(SessionNotFound) as e:  # closed on leaving the `with`
        runtime.session_info(sid)
    assert e.value.grpc_code == "NOT_FOUND"


def test_grpc_break_out_of_generate_cancels(runtime):
    with runtime.create_session() as s:
        s.append(TURN)
        for frame in s.generate(900):
            assert isinstance(frame, TokenChunk) and frame.token_ids
            break
        info = _wait_idle(s.info)
        assert not info.busy and len(TURN) < info.history_length < len(TURN) + 900
        assert info.kv_cached_tokens == info.history_length - 1
        assert s.generate_all(2).done.completion_tokens >= 1  # still usable


def test_grpc_errors(servers, runtime):
    with RuntimeClient(servers[1], api_key="wrong") as bad, pytest.raises(Unauthenticated) as e:
        bad.create_session()
    assert e.value.grpc_code == "UNAUTHENTICATED" and e.value.message
    for call in (lambda: runtime.session_info("nope"), lambda: runtime.append("nope", [1]),
                 lambda: runtime.generate_all("nope", 2), lambda: runtime.close_session("nope")):
        with pytest.raises(SessionNotFound):
            call()
    with runtime.create_session() as s:
        s.append(TURN)
        with pytest.raises(InvalidRequest) as e:
            s.append([5, -1])
        assert e.value.grpc_code == "INVALID_ARGUMENT" and s.info().history_length == len(TURN)
        with pytest.raises(InvalidRequest):  # past the 1024-token context
            s.generate_all(2000)
        with pytest.raises(InvalidRequest):
            s.generate_all(2, speculative_method="telepathy")
        running = s.generate(900)
        assert isinstance(next(running), TokenChunk)
        with pytest.raises(SessionBusy) as e:
            s.generate_all(2)
        assert e.value.grpc_code == "FAILED_PRECONDITION"
        with pytest.raises(SessionBusy):
            s.append([1])
        running.close()
        assert not _wait_idle(s.info).busy


def test_async_runtime_client(servers):
    async def main() -> tuple[list[int], int]:
        async with AsyncRuntimeClient(servers[1], api_key=KEY) as rc:
            async with await rc.create_session(label="async", kv_window=(2, 4)) as small:
                await small.append(TURN)
                await small.generate_all(12, temperature=0)
                windowed = (await small.info()).kv_bytes
            async with await rc.create_session(label="async") as s:
                assert await s.append(TURN) == len(TURN)
                whole = await s.generate_all(6, temperature=0)
                assert (await s.info()).history_length == whole.done.history_length
                async with contextlib.aclosing(s.generate(900)) as frames:
                    async for frame in frames:
                        assert isinstance(frame, TokenChunk)
                        break
                deadline = time.monotonic() + 5
                while (info := await s.info()).busy and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                assert not info.busy and info.history_length > whole.done.history_length
                assert 0 < windowed < info.kv_bytes  # (2 + 4 + k + 1) positions against the whole history
                sid = s.session_id
            with pytest.raises(SessionNotFound):
                await rc.session_info(sid)
        async with AsyncRuntimeClient(servers[1], api_key="wrong") as bad:
            with pytest.raises(Unauthenticated):
                await bad.create_session()
        return whole.token_ids, whole.done.completion_tokens

    tokens, n = asyncio.run(main())
    assert len(tokens) == n >= 1
    with RuntimeClient(servers[1], api_key=KEY) as rc, rc.create_session() as s:  # sync and async agree
        s.append(TURN)
        assert s.generate_all(6, temperature=0).token_ids == tokens


def test_errors_are_one_hierarchy():
    assert issubclass(ContextLengthExceeded, InvalidRequest) and issubclass(TooManySessions, Overloaded)
    for cls in (InvalidRequest, ModelNotFound, SessionNotFound, SessionBusy, Unauthenticated, PayloadTooLarge,
                Overloaded, Unavailable):
        assert issubclass(cls, KakeyaError) and cls is not KakeyaError
