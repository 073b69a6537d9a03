"""Tenants and namespaces over the real edges (uvicorn on 127.0.0.1 and grpc.aio, tiny Qwen3): a
session belongs to the key that made it, caches are partitioned per key, client ids never touch
prefix entries; and the accounting is right however a request ended."""
from __future__ import annotations

import grpc
import httpx
import pytest

from grpc_server import LiveGrpc
from http_server import LiveServer
from inference_engine.config import EngineConfig, ServerConfig
from inference_engine.engine.async_engine import AsyncEngine
from inference_engine.engine.llm import LLM
from inference_engine.http.app import ServerState, create_app
from inference_engine.rpc.pb.kakeya.v1 import runtime_pb2 as pb
from inference_engine.rpc.pb.kakeya.v1 import runtime_pb2_grpc as pb_grpc
from serve_process import metric

TURN = [151644, 872, 198, 3838, 911, 264, 1008, 30, 151645, 198, 151644, 77091, 198]
KEYS = ("key-a", "key-b")


def _h(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _live(tiny_loaded, share: bool = False):
    engine = AsyncEngine(LLM(tiny_loaded, EngineConfig(share_cache_across_keys=share, cost_curve=(1.0,) * 9)))
    state = ServerState(ServerConfig(api_keys=KEYS), engine)
    return engine, LiveServer(create_app(state))


def _complete(url, key, prompt=TURN, **kw):
    body = {"prompt": prompt, "max_tokens": 6, "temperature": 0, "return_token_ids": True, **kw}
    r = httpx.post(url + "/v1/completions", json=body, headers=_h(key), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def live(tiny_loaded):
    engine, server = _live(tiny_loaded)
    with server:
        yield server.url, engine
    engine.shutdown()


def test_a_session_belongs_to_the_key_that_made_it(live):
    url, _ = live
    _complete(url, "key-a", session_id="mine")
    assert httpx.get(url + "/v1/sessions/mine", headers=_h("key-a")).status_code == 200
    for method in ("GET", "DELETE"):
        r = httpx.request(method, url + "/v1/sessions/mine", headers=_h("key-b"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    # the same id under key-b is key-b's own, new session: nothing of key-a's is reused
    other = _complete(url, "key-b", session_id="mine")
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    again = _complete(url, "key-a", TURN + [9707], session_id="mine")
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == len(TURN)


def test_prefix_cache_and_suffix_index_are_per_key(live):
    url, _ = live
    secret = TURN * 4
    first = _complete(url, "key-a", secret, max_tokens=12, ignore_eos=True)
    text = first["choices"][0]["token_ids"]
    # key-b guessing key-a's prompt learns nothing from cached_tokens or from speculation stats
    guess = _complete(url, "key-b", secret + text[:4], max_tokens=8, ignore_eos=True,
                      speculative={"method": "suffix", "num_draft_tokens": 8})
    assert guess["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert guess["usage"]["speculative"]["accepted_tokens"] == 0
    own = _complete(url, "key-a", secret + text[:4], max_tokens=8, ignore_eos=True,
                    speculative={"method": "suffix", "num_draft_tokens": 8})
    assert own["usage"]["prompt_tokens_details"]["cached_tokens"] >= len(secret) - 1
    assert own["usage"]["speculative"]["accepted_tokens"] > 0


def test_sharing_caches_across_keys_is_an_opt_in(tiny_loaded):
    engine, server = _live(tiny_loaded, share=True)
    with server:
        _complete(server.url, "key-a", TURN * 3)
        shared = _complete(server.url, "key-b", TURN * 3 + [9707])
        assert shared["usage"]["prompt_tokens_details"]["cached_tokens"] >= len(TURN) * 3 - 1
        # sessions stay private even then
        _complete(server.url, "key-a", session_id="private")
        assert httpx.get(server.url + "/v1/sessions/private", headers=_h("key-b")).status_code == 404
    engine.shutdown()


def test_server_generated_session_ids(live):
    url, _ = live
    r = httpx.post(url + "/v1/sessions", headers=_h("key-a"))
    assert r.status_code == 200
    sid = r.json()["id"]
    assert sid.startswith("sess-") and len(sid) == len("sess-") + 32 and r.json()["history_length"] == 0
    _complete(url, "key-a", session_id=sid)
    assert httpx.get(url + f"/v1/sessions/{sid}", headers=_h("key-a")).json()["history_length"] == len(TURN) + 6
    assert httpx.get(url + f"/v1/sessions/{sid}", headers=_h("key-b")).status_code == 404
    assert httpx.post(url + "/v1/sessions").status_code == 401


def test_client_session_ids_never_touch_prefix_entries(live):
    url, engine = live
    prompt = [151644, 872, 198, 1008, 30] * 5
    _complete(url, "key-a", prompt)  # leaves a prefix entry (named prefix-N inside the store)
    for n in range(8):  # a client naming its session like one cannot replace or read it
        r = _complete(url, "key-a", TURN, session_id=f"prefix-{n}")
        assert r["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    reuse = _complete(url, "key-a", prompt + [9707])
    assert reuse["usage"]["prompt_tokens_details"]["cached_tokens"] >= len(prompt) - 1


def test_a_refused_request_creates_no_session_and_is_counted(live):
    url, _ = live
    before = metric(url, 'kakeya_requests_total{endpoint="/v1/completions",finish_reason="error",status="400"}')
    r = httpx.post(url + "/v1/completions", headers=_h("key-a"),
                   json={"prompt": TURN, "max_tokens": 10**6, "session_id": "never-400"})
    assert r.status_code == 400
    assert httpx.get(url + "/v1/sessions/never-400", headers=_h("key-a")).status_code == 404
    r = httpx.post(url + "/v1/completions", headers=_h("key-a"), json={"prompt": TURN, "temperature": 5})
    assert r.status_code == 400  # refused by the schema, before the route runs: counted all the same
    assert metric(url, 'kakeya_requests_total{endpoint="/v1/completions",finish_reason="error",status="400"}') \
        == before + 2


def test_stop_string_keeps_usage_and_speculative_stats(live):
    url, _ = live
    full = _complete(url, "key-a", TURN * 2, max_tokens=16, ignore_eos=True)
    text = full["choices"][0]["text"]
    stop = text[6:10]
    assert stop.strip()
    _complete(url, "key-a", TURN * 2, session_id="stopper", max_tokens=2)
    r = _complete(url, "key-a", TURN * 2, session_id="stopper", max_tokens=16, ignore_eos=True, stop=[stop],
                  speculative={"method": "suffix", "num_draft_tokens": 4})
    assert r["choices"][0]["finish_reason"] == "stop" and stop not in r["choices"][0]["text"]
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # was 0 when a stop string ended it
    assert r["usage"]["speculative"]["verify_steps"] >= 1  # was empty


def test_grpc_sessions_are_per_key_and_append_during_generate_is_refused(live):
    url, engine = live
    with LiveGrpc(engine, KEYS) as server, grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.RuntimeServiceStub(ch)
        a, b = [("authorization", "Bearer key-a")], [("authorization", "Bearer key-b")]
        sid = stub.CreateSession(pb.CreateSessionRequest(), metadata=a).session_id
        stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=TURN), metadata=a)
        with pytest.raises(grpc.RpcError) as e:
            stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=sid), metadata=b)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        frames = stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=400), metadata=a)
        next(frames)  # admitted: the session is busy until the generate ends
        with pytest.raises(grpc.RpcError) as e:
            stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=[9707]), metadata=a)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        rest = list(frames)
        done = rest[-1].done
        info = stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=sid), metadata=a)
        assert info.history_length == len(TURN) + done.completion_tokens == done.history_length  # nothing lost
