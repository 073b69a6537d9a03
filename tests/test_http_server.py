"""The OpenAI-compatible server end to end: real uvicorn on 127.0.0.1, the official openai
client, raw HTTP for framing and errors, the real tiny Qwen3 behind it."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from http_server import LiveServer
from inference_engine.config import EngineConfig, ServerConfig
from inference_engine.engine.async_engine import AsyncEngine
from inference_engine.engine.llm import LLM
from inference_engine.http.app import ServerState, create_app

MSG = [{"role": "user", "content": "Say something."}]


def _start(loaded, engine_config=EngineConfig(), **server_kwargs):
    engine = AsyncEngine(LLM(loaded, engine_config))
    state = ServerState(ServerConfig(**server_kwargs), engine)
    return engine, state, LiveServer(create_app(state))


@pytest.fixture(scope="module")
def live(tiny_loaded):
    engine, state, server = _start(tiny_loaded)
    with server:
        yield server, engine, tiny_loaded.info.name
    engine.shutdown()


@pytest.fixture()
def client(live):
    return openai.OpenAI(base_url=live[0].url + "/v1", api_key="unused", max_retries=0)


def test_chat_completion(client, live):
    r = client.chat.completions.create(model=live[2], messages=MSG, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == live[2]
    c = r.choices[0]
    assert c.message.role == "assistant" and isinstance(c.message.content, str) and c.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 5
    spec = r.usage.model_extra["speculative"]
    assert spec["verify_steps"] >= 1 and spec["accepted_tokens"] <= spec["draft_tokens"]


def test_chat_streaming_matches_non_streaming(client, live):
    kw = dict(model=live[2], messages=MSG, max_tokens=10, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == full and len(finish) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1


def test_completions_and_echo(client, live):
    r = client.completions.create(model=live[2], prompt="Once upon a time", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens <= 6
    e = client.completions.create(model=live[2], prompt="Once upon a time", max_tokens=6, temperature=0, echo=True)
    assert e.choices[0].text == "Once upon a time" + r.choices[0].text


def test_completions_streaming(client, live):
    chunks = list(client.completions.create(model=live[2], prompt=[9707, 11, 1879], max_tokens=5, temperature=0, stream=True))
    assert all(c.object == "text_completion" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_models(client, live):
    assert [m.id for m in client.models.list().data] == [live[2]]
    assert client.models.retrieve(live[2]).id == live[2]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-nope", messages=MSG, max_tokens=2)
    assert e.value.body["code"] == "model_not_found"


def test_n_and_seed_reproducible(client, live):
    kw = dict(model=live[2], messages=MSG, max_tokens=8, temperature=1.0, seed=11, n=3)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    texts = [c.message.content for c in a.choices]
    assert len(texts) == 3 and texts == [c.message.content for c in b.choices]
    assert len(set(texts)) > 1  # each choice has its own seed


def test_stop_string_never_reaches_client(client, live):
    kw = dict(model=live[2], messages=MSG, max_tokens=12, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.content
    stop = full[3:6]
    assert stop
    r = client.chat.completions.create(stop=[stop], **kw)
    assert r.choices[0].message.content == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_output_ending_inside_a_held_back_stop_prefix(client, live, stream):
    """A stop string whose start the output ends with (max_tokens comes first): the text held back
    as a possible stop is released at the end, so the answer is the whole text; a stop string that
    occurs is cut exactly where brute force over the unstopped text finds it."""
    kw = dict(model=live[2], messages=MSG, max_tokens=12, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.content
    for stop, expected, finish in ((full[-2:] + "\u2603", full, "length"),
                                   (full[-4:-1], full[: full.index(full[-4:-1])], "stop")):
        if stream:
            chunks = [c for c in client.chat.completions.create(stop=[stop], stream=True, **kw) if c.choices]
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            reason = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
        else:
            c = client.chat.completions.create(stop=[stop], **kw).choices[0]
            text, reason = c.message.content, [c.finish_reason]
        assert (text, reason) == (expected, [finish]), stop


def test_async_client_concurrent_streams(live):
    async def main():
        aclient = openai.AsyncOpenAI(base_url=live[0].url + "/v1", api_key="unused", max_retries=0)
        prompts = [[{"role": "user", "content": f"Topic {i}"}] for i in range(3)]
        alone = [(await aclient.chat.completions.create(model=live[2], messages=p, max_tokens=8, temperature=0)
                  ).choices[0].message.content for p in prompts]

        async def stream(p):
            out = ""
            async for c in await aclient.chat.completions.create(model=live[2], messages=p, max_tokens=8, temperature=0,
                                                                 stream=True):
                out += (c.choices[0].delta.content or "") if c.choices else ""
            return out

        together = await asyncio.gather(*(stream(p) for p in prompts))
        await aclient.close()
        return alone, together

    alone, together = asyncio.run(main())
    assert together == alone


def test_sse_framing_raw(live):
    body = {"messages": MSG, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", live[0].url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    events = [e for e in raw.replace("\r\n", "\n").split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"messages": MSG, "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": MSG, "temperature": 5}, 400, "temperature"),
        ({"messages": []}, 400, "messages"),
        ({"max_tokens": 3}, 400, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
        ({"messages": MSG, "max_tokens": 10**6}, 400, "max_tokens"),
        ({"messages": MSG, "speculative": {"method": "eagle"}}, 400, "speculative.method"),
    ],
)
def test_errors_use_openai_envelope(live, body, status, param):
    r = httpx.post(live[0].url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_context_length_code_and_malformed_json_and_413(live):
    r = httpx.post(live[0].url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 10**6}, timeout=30)
    assert r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(live[0].url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(live[0].url + "/v1/chat/completions", content=b"x" * (5 * 1024 * 1024),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert httpx.get(live[0].url + "/healthz").status_code == 200  # still serving


def test_metrics_after_completion(client, live):
    client.chat.completions.create(model=live[2], messages=MSG, max_tokens=3, temperature=0,
                                   extra_body={"speculative": {"method": "ngram", "num_draft_tokens": 2}})
    text = httpx.get(live[0].url + "/metrics").text
    assert 'kakeya_requests_total{endpoint="/v1/chat/completions",finish_reason=' in text
    for name in ("kakeya_generation_tokens_total", "kakeya_spec_decode_num_drafts_total",
                 "kakeya_spec_decode_num_draft_tokens_total", "kakeya_spec_decode_num_accepted_tokens_total",
                 "kakeya_time_to_first_token_seconds_bucket", "kakeya_num_requests_running"):
        assert name in text
    itl = [l for l in text.splitlines() if l.startswith("kakeya_inter_token_latency_seconds_count")]
    assert itl and float(itl[0].split()[-1]) >= 2  # 3 tokens: 2 gaps


def _samples(live) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(live[0].url + "/metrics").text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_prefix_cache_queue_prefill_decode_metrics(client, live):
    """vLLM's families: prompt tokens looked up and found cached, the KV cache's share of its byte
    budget, and each request's queue / prefill / decode time."""
    before = _samples(live)
    messages = [{"role": "user", "content": "A prompt long enough to be worth caching, " * 4}]
    usages = [client.chat.completions.create(model=live[2], messages=messages, max_tokens=6, temperature=0,
                                             extra_body={"ignore_eos": True}).usage for _ in range(2)]
    after = _samples(live)
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    assert delta["kakeya_prefix_cache_queries_total"] == sum(u.prompt_tokens for u in usages)
    hits = [u.prompt_tokens_details.cached_tokens for u in usages]
    assert delta["kakeya_prefix_cache_hits_total"] == sum(hits) and hits[1] > hits[0]
    for phase in ("queue", "prefill", "decode"):
        assert delta[f"kakeya_request_{phase}_time_seconds_count"] == 2
    parts = sum(delta[f"kakeya_request_{phase}_time_seconds_sum"] for phase in ("queue", "prefill", "decode"))
    assert delta["kakeya_request_prefill_time_seconds_sum"] > 0  # phases of the requests, not of the server:
    assert parts <= delta["kakeya_e2e_request_latency_seconds_sum"]  # together within their end-to-end time
    assert delta["kakeya_request_decode_time_seconds_sum"] > 0  # 5 tokens after the first
    assert 0 < after["kakeya_kv_cache_usage_perc"] <= 1
    # bytes per cached token: at least the model's own K+V bytes per position (capacity is reserved ahead)
    c = live[1].llm.model.config
    per_position = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4  # float32
    assert after["kakeya_kv_bytes_per_cached_token"] >= per_position
    assert after["kakeya_suffix_index_tokens"] > 0  # finished requests are indexed for drafting


def test_disconnect_mid_stream_aborts(live):
    """The request stops within a few steps of the client leaving, far short of its max_tokens
    (it would otherwise run ~1000 steps, long past this test's wait)."""
    engine = live[1]
    body = {"messages": MSG, "max_tokens": 1000, "stream": True, "ignore_eos": True,
            "speculative": {"method": "none"}}
    with httpx.stream("POST", live[0].url + "/v1/chat/completions", json=body, timeout=30) as r:
        for _ in r.iter_lines():
            if engine.num_running:
                break
        left = engine.core.verifier.forwards
    deadline = time.time() + 10
    while engine.num_active and time.time() < deadline:
        time.sleep(0.01)
    assert engine.num_active == 0 and engine.core.verifier.forwards - left < 300


def test_auth_and_public_endpoints(tiny_loaded):
    engine, state, server = _start(tiny_loaded, api_keys=("k1", "k2"))
    with server:
        url = server.url
        assert httpx.get(url + "/v1/models").status_code == 401
        r = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k2"}).status_code == 200
        assert httpx.get(url + "/healthz").status_code == 200 and httpx.get(url + "/metrics").status_code == 200
        c = openai.OpenAI(base_url=url + "/v1", api_key="k1", max_retries=0)
        assert c.chat.completions.create(messages=MSG, model=tiny_loaded.info.name, max_tokens=2).choices
    engine.shutdown()


def test_queue_full_gives_429(tiny_loaded):
    engine, state, server = _start(tiny_loaded, EngineConfig(max_running=1, max_waiting=1))
    long = {"messages": MSG, "max_tokens": 400, "stream": True}
    with server, httpx.Client(base_url=server.url, timeout=30) as h:
        with h.stream("POST", "/v1/chat/completions", json=long) as first, \
                h.stream("POST", "/v1/chat/completions", json=long) as second:
            deadline = time.time() + 10
            while engine.num_waiting < 1 and time.time() < deadline:
                time.sleep(0.02)
            r = h.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 2})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
    engine.shutdown()


def test_health_503_while_loading():
    state = ServerState(ServerConfig())
    with LiveServer(create_app(state)) as server:
        r = httpx.get(server.url + "/healthz")
        assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
        assert httpx.post(server.url + "/v1/chat/completions", json={"messages": MSG}).status_code == 503


def test_chat_logprobs(client, live):
    r = client.chat.completions.create(model=live[2], messages=MSG, max_tokens=5, temperature=0, logprobs=True,
                                       top_logprobs=3, extra_body={"speculative": {"method": "ngram", "num_draft_tokens": 3}})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token
    assert "".join(t.token for t in content) == r.choices[0].message.content


def test_completion_logprobs_streamed(client, live):
    chunks = list(client.completions.create(model=live[2], prompt="Hello", max_tokens=4, temperature=0, logprobs=2,
                                            stream=True))
    lps = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    tokens = [t for lp in lps for t in lp.tokens]
    assert len(tokens) == 4 and all(len(top) == 2 for lp in lps for top in lp.top_logprobs)
    assert "".join(tokens) == "".join(c.choices[0].text for c in chunks)


def test_penalties_bias_and_tools_accepted(client, live):
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    r = client.chat.completions.create(
        model=live[2], max_tokens=4, temperature=0, presence_penalty=1.0, frequency_penalty=0.5,
        logit_bias={"9707": 100}, tools=[tool], tool_choice="auto", user="u1",
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Look it up."}]},
                  {"role": "assistant", "content": None,
                   "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "42"}],
        extra_body={"chat_template_kwargs": {"enable_thinking": False}, "top_k": 5, "min_p": 0.01},
    )
    assert r.choices[0].message.content == "Hello" * 4  # token 9707 is "Hello", forced by logit_bias
    r = httpx.post(live[0].url + "/v1/chat/completions", json={"messages": MSG, "logit_bias": {"abc": 1}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"


def test_keepalive_comments(tiny_loaded):
    engine, state, server = _start(tiny_loaded, keepalive_seconds=0.01)
    with server:
        body = {"messages": MSG, "max_tokens": 40, "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
            raw = "".join(r.iter_text())
    engine.shutdown()
    # sse-starlette's ping task may still fire once between [DONE] and close; comments are ignored by clients
    events = [e for e in raw.replace("\r\n", "\n").split("\n\n") if e.strip() and not e.startswith(":")]
    assert ": ping" in raw and events[-1] == "data: [DONE]"


def test_server_defaults_for_requests_that_name_none(tiny_loaded):
    """--temperature and --max-tokens (agents such as Codex CLI send neither) apply only where a
    request names nothing, on every API: greedy against transformers' own argmax, capped; a request's
    own values still win."""
    from test_lossless_models import hf_chat_greedy

    engine, _, server = _start(tiny_loaded, EngineConfig(default_temperature=0.0, default_max_tokens=5))
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    _, ref = hf_chat_greedy(tiny_loaded, messages, 5)
    _, ref_off = hf_chat_greedy(tiny_loaded, messages, 5, enable_thinking=False)  # Anthropic's default
    with server:
        base, model = server.url + "/v1", tiny_loaded.info.name
        chat = httpx.post(base + "/chat/completions", json={"model": model, "messages": messages}, timeout=60).json()
        resp = httpx.post(base + "/responses", json={"model": model, "input": messages}, timeout=60).json()
        msg = httpx.post(base + "/messages", json={"model": model, "messages": messages, "max_tokens": 5},
                         timeout=60).json()
        own = httpx.post(base + "/chat/completions", json={"model": model, "messages": messages, "max_tokens": 7,
                                                           "temperature": 1.0, "seed": 3}, timeout=60).json()
    engine.shutdown()
    text = tiny_loaded.tokenizer.decode(ref)
    assert chat["usage"]["completion_tokens"] == len(ref) == 5 and chat["choices"][0]["message"]["content"] == text
    assert resp["temperature"] == 0.0 and resp["usage"]["output_tokens"] == 5 and resp["output"][0]["content"][0]["text"] == text
    assert msg["content"][0]["text"] == tiny_loaded.tokenizer.decode(ref_off)
    assert own["usage"]["completion_tokens"] == 7
