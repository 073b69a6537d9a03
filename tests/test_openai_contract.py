"""The OpenAI request/response contract beyond the basics (issue 14, deliverable 3): explicit
nulls, OpenAI's validation ranges both ways, the response fields clients read, `x-request-id`,
LF LF SSE framing and CORS — against a real uvicorn server on the tiny Qwen3, through the
official client where it applies and raw HTTP where framing and headers are the point."""
from __future__ import annotations

import json

import httpx
import torch
import openai
import pytest

from http_server import openai_client, serving

USER = {"role": "user", "content": "hi"}
ORIGIN = "http://localhost:3000"
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def live(tiny_loaded):
    with serving(tiny_loaded, allowed_origins=(ORIGIN,)) as (server, _):
        yield server


def _chat(live, **body) -> httpx.Response:
    return httpx.post(live.url + "/v1/chat/completions", json={"messages": [USER], "max_tokens": 2, **body}, timeout=60)


def test_openai_client_sends_nulls(live):
    r = openai_client(live).chat.completions.create(model=openai.NOT_GIVEN, messages=[USER],
                                       max_tokens=2, temperature=None, top_p=None, n=None, stream=None,
                                       presence_penalty=None, frequency_penalty=None, logprobs=None, seed=None)
    assert r.choices[0].message.refusal is None and r.system_fingerprint == "kakeya" and r.service_tier == "default"
    assert r.usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.parametrize("field", ["temperature", "top_p", "n", "stream", "presence_penalty", "frequency_penalty",
                                   "logprobs", "top_logprobs", "stop", "logit_bias", "seed", "stream_options"])
def test_explicit_null_means_default(live, field):
    r = _chat(live, **{field: None})
    assert r.status_code == 200, r.text
    r = httpx.post(live.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "echo": None, field: None})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body", [
    {"top_p": 0},                                            # greedy over the top token
    {"n": 20, "max_tokens": 1},                              # OpenAI allows up to 128
    {"messages": [USER, {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]}, USER]},
    {"reasoning_effort": "low"},
    {"tools": [TOOL], "tool_choice": "required"},
    {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"response_format": {"type": "text"}},
    {"messages": [USER, {"role": "assistant", "content": None, "refusal": "I can't."}, USER]},  # as the client sends it back
    {"n": 2, "best_of": 2, "max_tokens": 1},                 # best_of = n: what every request does
    {"modalities": ["text"], "store": False, "metadata": {"k": "v"}},
])
def test_accepted_as_openai_does(live, body):
    r = _chat(live, **body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body, param", [
    ({"top_logprobs": 3}, "top_logprobs"),                   # needs logprobs: true
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),           # at most 4
    ({"logit_bias": {"5": 101}}, "logit_bias.5"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),            # no tools to require
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools.0.function.name"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"messages": [USER, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"}]}, "messages.1.tool_calls.0.function.arguments"),
    # OpenAI fields that would change the answer and are not implemented: refused by name, never ignored
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"n": 1, "best_of": 3}, "best_of"),
])
def test_refused_as_openai_does(live, body, param):
    r = _chat(live, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_request_id_header(live):
    r = _chat(live)
    assert r.headers["x-request-id"].startswith("req-")
    assert _chat(live, top_logprobs=3).headers["x-request-id"].startswith("req-")  # errors carry one too
    given = httpx.post(live.url + "/v1/chat/completions", json={"messages": [USER], "max_tokens": 1},
                       headers={"x-request-id": "trace-123"}, timeout=60)
    assert given.headers["x-request-id"] == "trace-123"


def test_sse_events_end_in_lf_lf_and_usage_is_null_until_the_last_chunk(live):
    r = _chat(live, stream=True, stream_options={"include_usage": True}, max_tokens=3)
    assert r.status_code == 200 and "\r" not in r.text
    events = [e for e in r.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(c["system_fingerprint"] == "kakeya" for c in chunks)
    plain = _chat(live, stream=True, max_tokens=2)
    assert all("usage" not in json.loads(e[6:]) for e in plain.text.split("\n\n") if e.startswith("data: {"))


def test_cors_preflight_and_response_headers(live):
    pre = httpx.options(live.url + "/v1/chat/completions", headers={
        "origin": ORIGIN, "access-control-request-method": "POST", "access-control-request-headers": "content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.post(live.url + "/v1/chat/completions", json={"messages": [USER], "max_tokens": 1},
                   headers={"origin": ORIGIN}, timeout=60)
    assert r.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(live.url + "/v1/chat/completions", headers={
        "origin": "http://evil.example", "access-control-request-method": "POST"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_no_cors_by_default(tiny_loaded):
    with serving(tiny_loaded) as (server, _):
        pre = httpx.options(server.url + "/v1/chat/completions", headers={
            "origin": ORIGIN, "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in pre.headers


def test_completions_batch_prompts(live):
    """A list of prompts (strings or token lists): n choices each, index = prompt × n + j, each
    echoing its own prompt; usage counts every prompt."""
    r = httpx.post(live.url + "/v1/completions", timeout=60, json={
        "prompt": ["The sky is", "One two three"], "max_tokens": 3, "n": 2, "echo": True, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [c["text"].startswith(p) for c, p in zip(body["choices"], ["The sky is"] * 2 + ["One two three"] * 2)] == [True] * 4
    single = [httpx.post(live.url + "/v1/completions", timeout=60, json={
        "prompt": p, "max_tokens": 3, "temperature": 0}).json() for p in ("The sky is", "One two three")]
    assert body["usage"]["prompt_tokens"] == sum(s["usage"]["prompt_tokens"] for s in single)
    assert [c["text"] for c in body["choices"]] == [p + s["choices"][0]["text"] for p, s in
                                                   zip(["The sky is"] * 2 + ["One two three"] * 2, [single[0]] * 2 + [single[1]] * 2)]
    ids = httpx.post(live.url + "/v1/completions", timeout=60, json={"prompt": [[791, 12884, 374], [3966]], "max_tokens": 2})
    assert ids.status_code == 200 and len(ids.json()["choices"]) == 2
    empty = httpx.post(live.url + "/v1/completions", timeout=60, json={"prompt": ["ok", ""], "max_tokens": 2})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "prompt.1"


def test_completions_echo_logprobs_score_the_prompt(live, tiny_loaded):
    """echo + logprobs with max_tokens 0, as eval harnesses score text: the prompt's own token
    log-probabilities (the first is null), equal to the transformers forward's."""
    ids = [791, 12884, 374, 6303, 13, 576]
    r = httpx.post(live.url + "/v1/completions", timeout=60, json={
        "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 2, "temperature": 0})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert choice["finish_reason"] == "length" and r.json()["usage"]["completion_tokens"] == 0
    assert len(lp["tokens"]) == len(ids) and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    with torch.inference_mode():
        ref = tiny_loaded.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)  # [L, V]
    expected = [ref[i, t].item() for i, t in enumerate(ids[1:])]
    assert lp["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    assert all(len(top) == 2 for top in lp["top_logprobs"][1:]) and lp["text_offset"][0] == 0
    more = httpx.post(live.url + "/v1/completions", timeout=60, json={
        "prompt": ids, "max_tokens": 2, "echo": True, "logprobs": 0, "temperature": 0}).json()["choices"][0]
    assert len(more["logprobs"]["tokens"]) == len(ids) + 2
    assert more["logprobs"]["token_logprobs"][1:len(ids)] == pytest.approx(expected, abs=1e-4)
    # the generated rows are the same as without echo, and each text_offset is where its token's
    # text starts in the returned text (recomputed here from the tokens)
    plain = httpx.post(live.url + "/v1/completions", timeout=60, json={
        "prompt": ids, "max_tokens": 2, "logprobs": 0, "temperature": 0}).json()["choices"][0]
    for key in ("tokens", "token_logprobs"):
        assert more["logprobs"][key][len(ids):] == pytest.approx(plain["logprobs"][key], abs=1e-5), key
    for lp, text in ((more["logprobs"], more["text"]), (plain["logprobs"], plain["text"])):
        starts = [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
        assert lp["text_offset"] == starts and "".join(lp["tokens"]) == text
    no_echo = httpx.post(live.url + "/v1/completions", timeout=60, json={"prompt": ids, "max_tokens": 0, "logprobs": 1})
    assert no_echo.status_code == 400 and no_echo.json()["error"]["param"] == "max_tokens"
    # echo alone with max_tokens 0 returns the prompt (OpenAI's documented echo), no logprobs
    alone = httpx.post(live.url + "/v1/completions", timeout=60, json={"prompt": "The sky is", "max_tokens": 0,
                                                                     "echo": True})
    assert alone.status_code == 200, alone.text
    assert alone.json()["choices"][0]["text"] == "The sky is" and alone.json()["choices"][0]["logprobs"] is None
    six = httpx.post(live.url + "/v1/completions", timeout=60, json={"prompt": ids, "max_tokens": 1, "logprobs": 6})
    assert six.status_code == 400 and six.json()["error"]["param"] == "logprobs"  # OpenAI's maximum is 5


def test_echo_logprobs_of_a_one_token_prompt(live):
    r = httpx.post(live.url + "/v1/completions", timeout=60, json={
        "prompt": [791], "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0})
    lp = r.json()["choices"][0]["logprobs"]
    assert r.status_code == 200 and len(lp["tokens"]) == 2 and lp["token_logprobs"][0] is None
    assert lp["token_logprobs"][1] <= 0.0


def test_streamed_echo(live):
    """echo while streaming: each choice's prompt text comes first, then its tokens; joined, the
    stream equals the whole response."""
    body = {"prompt": ["The sky is", "One two"], "max_tokens": 4, "echo": True, "temperature": 0}
    whole = httpx.post(live.url + "/v1/completions", json=body, timeout=60).json()
    r = httpx.post(live.url + "/v1/completions", json={**body, "stream": True}, timeout=60)
    texts = ["", ""]
    for e in r.text.split("\n\n"):
        if e.startswith("data: {"):
            for c in json.loads(e[6:])["choices"]:
                texts[c["index"]] += c["text"]
    assert texts == [c["text"] for c in whole["choices"]] and texts[1].startswith("One two")


def test_completions_refuse_suffix_and_best_of_below_n(live):
    for body, param in (({"suffix": " end."}, "suffix"), ({"n": 3, "best_of": 2}, "best_of")):
        r = httpx.post(live.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, **body}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_chat_logprobs_carry_openais_refusal_field(live):
    r = openai_client(live).chat.completions.create(model=openai.NOT_GIVEN, messages=[USER], max_tokens=2,
                                                    logprobs=True, top_logprobs=1)
    raw = r.choices[0].logprobs.model_dump()
    assert set(raw) == {"content", "refusal"} and raw["refusal"] is None and raw["content"]


@pytest.mark.parametrize("stream", [False, True])
def test_peer_shaped_speculation_stats(live, stream):
    """llama-server's `timings` and vLLM's `metrics.speculative_decoding` beside our own numbers,
    each field by the peer's definition: llama's prompt_n + cache_n is the prompt, predicted_n the
    generated tokens, a rate is n / ms; vLLM's mean acceptance length is 1 + accepted / drafts."""
    body = {"prompt": "one two three four one two three four one two three four one two", "max_tokens": 16,
            "temperature": 0, "ignore_eos": True, "speculative": {"method": "ngram", "num_draft_tokens": 4}}
    if stream:
        r = httpx.post(live.url + "/v1/completions", timeout=60, json={
            **body, "stream": True, "stream_options": {"include_usage": True}})
        out = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")][-1]
    else:
        out = httpx.post(live.url + "/v1/completions", timeout=60, json=body).json()
    usage, t, v = out["usage"], out["timings"], out["metrics"]["speculative_decoding"]
    assert (t["prompt_n"] + t["cache_n"], t["predicted_n"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert t["predicted_per_second"] == pytest.approx(t["predicted_n"] / (t["predicted_ms"] / 1000), rel=1e-3)
    assert t["prompt_per_second"] == pytest.approx(t["prompt_n"] / (t["prompt_ms"] / 1000), rel=1e-3)
    spec = usage["speculative"]
    assert (t["draft_n"], t["draft_n_accepted"]) == (spec["draft_tokens"], spec["accepted_tokens"]) and t["draft_n"] > 0
    assert (v["num_spec_steps"], v["num_draft_tokens"], v["num_accepted_tokens"]) == (
        spec["drafts"], spec["draft_tokens"], spec["accepted_tokens"])
    assert v["mean_acceptance_length"] == pytest.approx(1 + spec["accepted_tokens"] / spec["drafts"], abs=1e-4)
    assert v["draft_acceptance_rate"] == pytest.approx(spec["accepted_tokens"] / spec["draft_tokens"], abs=1e-4)
