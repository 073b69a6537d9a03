"""Tool calling that is enforced and works with any model (http/tools.py): `tool_choice`
`required` or a named function always yields a valid call, through the real server and the
official client, on the tiny Qwen3 (its template renders tools) and on SmolLM2 (its template
ignores them: the server states them and the calling convention itself)."""
from __future__ import annotations

import json

import openai
import pydantic
import pytest

from http_server import openai_client, serving
from inference_engine.http import tools
from inference_engine.tokenizer import apply_chat_template

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                          "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 16}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Current time",
        "parameters": {"type": "object", "additionalProperties": False, "required": ["utc_offset"],
                       "properties": {"utc_offset": {"type": "integer", "minimum": -12, "maximum": 14}}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(tiny_loaded):
    with serving(tiny_loaded) as (server, _):
        yield openai_client(server)


def _check_call(call, name: str) -> dict:
    assert call.type == "function" and call.function.name == name and call.id.startswith("call_")
    return json.loads(call.function.arguments)


@pytest.mark.parametrize("method", ["none", "suffix"])
def test_named_function_is_called(client, method):
    """A named function is one call, even with parallel calls allowed (they are for `required`)."""
    r = client.chat.completions.create(
        model=openai.NOT_GIVEN, messages=ASK, tools=[WEATHER, TIME], max_tokens=60, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_time"}}, parallel_tool_calls=True,
        extra_body={"speculative": {"method": method, "num_draft_tokens": 4}})
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1, c.message
    args = _check_call(c.message.tool_calls[0], "get_time")
    assert isinstance(args["utc_offset"], int) and -12 <= args["utc_offset"] <= 14


def test_required_with_sampling_calls_one_of_the_tools(client):
    for seed in range(3):
        r = client.chat.completions.create(model=openai.NOT_GIVEN, messages=ASK, tools=[WEATHER, TIME], max_tokens=80,
                                           temperature=1.0, seed=seed, tool_choice="required", parallel_tool_calls=False)
        calls = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 1
        assert calls[0].function.name in ("get_weather", "get_time")
        _check_call(calls[0], calls[0].function.name)


def test_streamed_call(client):
    chunks = list(client.chat.completions.create(
        model=openai.NOT_GIVEN, messages=ASK, tools=[WEATHER], max_tokens=60, temperature=0, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]  # the head, then argument pieces
    assert calls[0].function.name == "get_weather" and calls[0].id and {c.index for c in calls} == {0}
    assert len(calls) > 2 and isinstance(json.loads("".join(c.function.arguments for c in calls))["city"], str)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_templates_with_and_without_tools(tiny_loaded, smol_loaded):
    assert tools.renders_tools(tiny_loaded.tokenizer) and not tools.renders_tools(smol_loaded.tokenizer)
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 C, sunny"}]
    text = smol_loaded.tokenizer.decode(apply_chat_template(smol_loaded.tokenizer, tools.inject(history, [WEATHER])))
    assert '"name": "get_weather"' in text and "<tool_call>" in text and "18 C, sunny" in text
    assert text.count("get_weather") >= 2  # listed in the system message and called in history


@pytest.mark.real_model
def test_default_model_calls_the_named_function(smol_loaded):
    """SmolLM2, whose template has no tool section, still makes a valid call when one is named."""
    with serving(smol_loaded) as (server, _):
        r = openai_client(server).chat.completions.create(
            model=openai.NOT_GIVEN, messages=ASK, tools=[WEATHER, TIME], max_tokens=64, temperature=0,
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
        args = _check_call(r.choices[0].message.tool_calls[0], "get_weather")
        assert r.choices[0].finish_reason == "tool_calls" and 1 <= len(args["city"]) <= 16


def _assembled(client, **kw) -> tuple[str, str, list[tuple[str, str]]]:
    """(finish_reason, content or "", [(name, arguments)]) of one request, whole or as a client
    assembles a stream."""
    if not kw.get("stream"):
        c = client.chat.completions.create(**kw).choices[0]
        return c.finish_reason, c.message.content or "", [(t.function.name, t.function.arguments)
                                                    for t in c.message.tool_calls or []]
    finish, content, calls = None, "", {}
    for chunk in client.chat.completions.create(**kw):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            content += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, ["", ""])
                entry[0] += tc.function.name or ""
                entry[1] += tc.function.arguments or ""
    return finish, content, [tuple(v) for _, v in sorted(calls.items())]


@pytest.mark.real_model
def test_required_calls_cut_by_max_tokens_agree_streamed_or_not(smol_loaded):
    """tool_choice "required" with parallel_tool_calls: SmolLM2 repeats its call until max_tokens
    (the grammar lets it end after any call; it does not), and wherever max_tokens cuts the output
    the streamed and the whole answer carry the same calls, the cut one with the arguments written
    so far, and never `<tool_call>` markup as content. Left unset, parallel_tool_calls means one call."""
    with serving(smol_loaded) as (server, _):
        client = openai_client(server)
        kw = dict(model=openai.NOT_GIVEN, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0)
        one = client.chat.completions.create(max_tokens=200, **kw)
        assert one.choices[0].finish_reason == "tool_calls" and len(one.choices[0].message.tool_calls) == 1
        seen = set()
        for max_tokens in range(4, 2 * one.usage.completion_tokens + 8, 4):
            whole = _assembled(client, max_tokens=max_tokens, parallel_tool_calls=True, **kw)
            assert whole == _assembled(client, max_tokens=max_tokens, parallel_tool_calls=True, stream=True, **kw)
            finish, content, calls = whole
            assert not content and all(name == "get_weather" for name, _ in calls), whole
            seen.add((finish, len(calls)))
        # cuts before, inside and after the first call, and inside the second, were all tried
        assert {("length", 0), ("length", 1), ("length", 2)} <= seen, seen


def test_allowed_tools_restrict_the_call(client):
    """OpenAI's tool_choice allowed_tools: only the listed functions may be called, under its mode."""
    for method in ("none", "suffix"):
        r = client.chat.completions.create(
            model=openai.NOT_GIVEN, messages=ASK, tools=[WEATHER, TIME], max_tokens=60, temperature=0,
            tool_choice={"type": "allowed_tools", "allowed_tools": {
                "mode": "required", "tools": [{"type": "function", "function": {"name": "get_time"}}]}},
            extra_body={"speculative": {"method": method, "num_draft_tokens": 4}})
        assert r.choices[0].finish_reason == "tool_calls"
        assert [c.function.name for c in r.choices[0].message.tool_calls] == ["get_time"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=openai.NOT_GIVEN, messages=ASK, tools=[WEATHER], max_tokens=8,
            tool_choice={"type": "allowed_tools", "allowed_tools": {
                "mode": "auto", "tools": [{"type": "function", "function": {"name": "get_time"}}]}})
    assert e.value.body["param"] == "tool_choice" and "get_time" in e.value.body["message"]


@pytest.mark.real_model
def test_parse_with_a_required_pydantic_tool(smol_loaded):
    """The official client's parse() with a strict pydantic tool and tool_choice "required" gets
    valid parsed arguments, not LengthFinishReasonError, when max_tokens is generous."""
    class GetWeather(pydantic.BaseModel):
        city: str
        unit: str

    with serving(smol_loaded) as (server, _):
        r = openai_client(server).chat.completions.parse(
            model=openai.NOT_GIVEN, messages=[{"role": "user", "content": "What is the weather in Paris, in celsius?"}],
            tools=[openai.pydantic_function_tool(GetWeather)], tool_choice="required", max_tokens=400, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.tool_calls
    assert all(isinstance(t.function.parsed_arguments, GetWeather) for t in c.message.tool_calls)
