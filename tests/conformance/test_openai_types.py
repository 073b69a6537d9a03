"""Conformance with OpenAI's published schema, through the types the official `openai` package
generates from it (openai.types: ChatCompletion, ChatCompletionChunk, Completion, Model): every
response and every streamed chunk of a set of request variants validates against them — required
fields present, types and enums (finish_reason, roles, objects) as the spec says. pydantic's
strict mode is used, so a number sent as a string or a null where the spec has none fails.

Two places where the published types are stricter than OpenAI's API itself, and we follow the
API: a streamed legacy completion has `finish_reason: null` until its last chunk (the type says
non-null; those nulls are filled in before validating), and an echoed prompt's first token has
a `null` logprob (nothing precedes it; not exercised here, see test_openai_contract.py).

These check types only (hence the names): whether a stop string, a tool call or a schema did
what it should is tested against references elsewhere (test_http_server, test_tool_calls,
test_structured_output)."""
from __future__ import annotations

import json

import httpx
import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from http_server import serving

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["city"],
    "properties": {"city": {"type": "string", "maxLength": 12}}}}}
CHAT = {
    "plain": {},
    "n=2 logprobs": {"n": 2, "logprobs": True, "top_logprobs": 3},
    "stop": {"stop": ["the", "a"], "temperature": 0.7, "seed": 1},
    "tool call": {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    "json": {"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": TOOL["function"]["parameters"]}}},
}
COMPLETION = {
    "plain": {"prompt": "The sky is"},
    "batch logprobs": {"prompt": ["The sky is", "One two"], "logprobs": 2, "n": 2},
    "echo": {"prompt": [791, 12884, 374], "echo": True},
}


@pytest.fixture(scope="module")
def live(tiny_loaded):
    with serving(tiny_loaded) as (server, _):
        yield server


def _events(text: str) -> list[dict]:
    return [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]


@pytest.mark.parametrize("name", CHAT)
@pytest.mark.parametrize("stream", [False, True])
def test_chat_response_types_only(live, name, stream):
    body = {"messages": USER, "max_tokens": 24, **CHAT[name], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    r = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    if not stream:
        ChatCompletion.model_validate(r.json(), strict=True)
        return
    chunks = _events(r.text)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk, strict=True)
    assert chunks[-1]["usage"] is not None


@pytest.mark.parametrize("name", COMPLETION)
@pytest.mark.parametrize("stream", [False, True])
def test_completion_response_types_only(live, name, stream):
    body = {"max_tokens": 8, **COMPLETION[name], "stream": stream}
    r = httpx.post(live.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    items = _events(r.text) if stream else [r.json()]
    for item in items:
        for choice in item["choices"] if stream else ():
            choice["finish_reason"] = choice["finish_reason"] or "stop"  # null until the end, as the API does
        Completion.model_validate(item, strict=True)
    assert any(c["finish_reason"] == "length" for item in items for c in item["choices"])


def test_model_list_types_only(live):
    listed = httpx.get(live.url + "/v1/models").json()
    assert listed["object"] == "list"
    for card in listed["data"]:
        Model.model_validate(card, strict=True)
