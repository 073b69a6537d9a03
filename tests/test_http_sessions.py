"""Sessions and the prefix cache over HTTP: real uvicorn, the openai client, raw httpx."""
from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from http_server import LiveServer
from inference_engine.config import EngineConfig, ServerConfig
from inference_engine.engine.async_engine import AsyncEngine
from inference_engine.engine.llm import LLM
from inference_engine.http.app import ServerState, create_app

TURN = [151644, 872, 198, 3838, 911, 264, 1008, 30, 151645, 198, 151644, 77091, 198]


@pytest.fixture(scope="module")
def live(tiny_loaded):
    engine = AsyncEngine(LLM(tiny_loaded, EngineConfig()))
    with LiveServer(create_app(ServerState(ServerConfig(), engine))) as server:
        yield server.url, engine
    engine.shutdown()


def _complete(url, prompt, session=None, header=False, **kw):
    body = {"prompt": prompt, "max_tokens": 6, "temperature": 0, "return_token_ids": True, **kw}
    headers = {}
    if session and header:
        headers["X-Session-Id"] = session
    elif session:
        body["session_id"] = session
    r = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("header", [False, True], ids=["body", "header"])
def test_twenty_turns_prefill_only_new_tokens(live, header):
    url, _ = live
    history: list[int] = []
    for turn in range(20):
        prompt = history + TURN
        r = _complete(url, prompt, "conv-%s" % header, header)
        cached = r["usage"]["prompt_tokens_details"]["cached_tokens"]
        # turn N feeds the new turn plus the last generated token of turn N-1, nothing more
        assert r["usage"]["prompt_tokens"] - cached == (len(TURN) if turn == 0 else len(TURN) + 1)
        history = prompt + r["choices"][0]["token_ids"]
    metrics = {l.split(" ")[0]: float(l.split(" ")[1]) for l in httpx.get(url + "/metrics").text.splitlines()
               if l.startswith(("kakeya_num_sessions ", "kakeya_session_cache_bytes ", "kakeya_model_forwards_total "))}
    assert metrics["kakeya_num_sessions"] >= 1 and metrics["kakeya_session_cache_bytes"] > 0
    assert metrics["kakeya_model_forwards_total"] >= 20
    info = httpx.get(url + "/v1/sessions/conv-%s" % header).json()
    assert info["history_length"] == len(history) and info["kv_cached_tokens"] == len(history) - 1
    assert info["kv_bytes"] > 0 and 0 <= info["idle_seconds"] < 5 and info["busy"] is False  # idle since its last turn
    assert info["speculative"]["verify_steps"] >= 20


def test_stateless_requests_reuse_a_cached_prefix(live):
    url, _ = live
    first = _complete(url, TURN * 3)
    second = _complete(url, TURN * 3 + first["choices"][0]["token_ids"] + TURN)
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= len(TURN) * 3 - 1


def test_session_chat_with_openai_client(live):
    url, _ = live
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Hello there, how are you?"}]
    r1 = client.chat.completions.create(model=_model(url), messages=messages,
                                        max_tokens=5, temperature=0, extra_body={"session_id": "chat-1"})
    messages += [{"role": "assistant", "content": r1.choices[0].message.content}, {"role": "user", "content": "And then?"}]
    r2 = client.chat.completions.create(model=_model(url), messages=messages, max_tokens=5, temperature=0,
                                        extra_headers={"X-Session-Id": "chat-1"})
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens - 1


def _model(url):
    return httpx.get(url + "/v1/models").json()["data"][0]["id"]


def test_session_errors(live):
    url, _ = live
    r = httpx.get(url + "/v1/sessions/never-made")
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    r = httpx.delete(url + "/v1/sessions/never-made")
    assert r.status_code == 404
    r = httpx.post(url + "/v1/completions", json={"prompt": TURN, "n": 2, "session_id": "s-n"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    _complete(url, TURN, "s-del")
    assert httpx.delete(url + "/v1/sessions/s-del").json()["deleted"] is True
    assert httpx.get(url + "/v1/sessions/s-del").status_code == 404


@pytest.mark.real_model
def test_busy_session_is_409_and_server_keeps_serving(smol_loaded):
    """SmolLM2 decodes ~15 tokens/s here, so a 500-token stream is surely still running while we probe."""
    engine = AsyncEngine(LLM(smol_loaded, EngineConfig()))
    with LiveServer(create_app(ServerState(ServerConfig(), engine))) as server:
        url, prompt = server.url, [1, 9690, 198, 28120, 905, 30]
        body = {"prompt": prompt, "max_tokens": 500, "temperature": 0, "stream": True, "session_id": "busy-1",
                "ignore_eos": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as stream:
            lines = stream.iter_lines()
            next(lines)  # the first event: the request is running
            assert httpx.get(url + "/v1/sessions/busy-1").json()["busy"] is True
            r = httpx.post(url + "/v1/completions", json={"prompt": prompt, "session_id": "busy-1", "max_tokens": 4})
            assert r.status_code == 409 and r.json()["error"]["code"] == "session_busy"
        # closing the stream aborted the request and returned the session, with what was generated
        for _ in range(200):
            if not httpx.get(url + "/v1/sessions/busy-1").json()["busy"]:
                break
            time.sleep(0.05)
        info = httpx.get(url + "/v1/sessions/busy-1").json()
        assert info["busy"] is False and len(prompt) < info["history_length"] < len(prompt) + 500
        r = _complete(url, prompt + [28120], "busy-1")
        assert r["usage"]["prompt_tokens_details"]["cached_tokens"] == len(prompt)
    engine.shutdown()


@pytest.mark.real_model
def test_stop_string_then_next_turn_at_once(smol_loaded):
    """A stop string ends the request at the edge; the session must be checked in before the
    response is sent, so the very next turn is not refused as busy (SmolLM2: a step takes ~60 ms,
    long enough for a next request to land mid-step)."""
    engine = AsyncEngine(LLM(smol_loaded, EngineConfig()))
    with LiveServer(create_app(ServerState(ServerConfig(), engine))) as server:
        prompt = [1, 9690, 198, 28120, 905, 30]
        first = _complete(server.url, prompt, max_tokens=24, ignore_eos=True)["choices"][0]["text"]
        stop = first[8:12]
        for _ in range(4):  # the same prompt each time (the session trims to the shared prefix): the stop recurs
            r = _complete(server.url, prompt, "stop-chain", stop=stop, max_tokens=24, ignore_eos=True)
            assert r["choices"][0]["finish_reason"] == "stop" and stop not in r["choices"][0]["text"]
    engine.shutdown()


def _chat(url, content, **kw):
    r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_prompt_cache_key_keeps_a_conversation_warm(live):
    """OpenAI's prompt_cache_key keeps the conversation's KV as a session: it survives more
    stateless traffic than the prefix cache holds (16 entries), where the same conversation
    without the key is prefilled again; as a hint it is never an error (n > 1, concurrent use)."""
    url, engine = live
    long = "Tell me about the history of maps and how sailors used them. " * 6
    for key, survives in (("conversation-7 / user 3", True), (None, False)):
        extra = {"prompt_cache_key": key} if key else {}
        first = _chat(url, long + str(survives), **extra)
        for i in range(20):  # more distinct stateless prompts than the prefix cache keeps
            _chat(url, f"Unrelated question number {i} about {survives}?", max_tokens=1)
        again = _chat(url, long + str(survives) + " And compasses?", **extra)
        cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert (cached >= first["usage"]["prompt_tokens"] - 8) is survives, (key, cached)
    two = _chat(url, "Hello", n=2, temperature=1.0, prompt_cache_key="shared")  # a hint that cannot apply: ignored
    assert len(two["choices"]) == 2

    async def together():
        async with httpx.AsyncClient(timeout=60) as c:
            body = {"messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 24,
                    "temperature": 0, "prompt_cache_key": "busy-key"}
            return await asyncio.gather(*(c.post(url + "/v1/chat/completions", json=body) for _ in range(3)))

    assert [r.status_code for r in asyncio.run(together())] == [200, 200, 200]  # busy key: the others run without it
