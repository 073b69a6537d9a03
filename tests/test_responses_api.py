"""/v1/responses (OpenAI's Responses API) through the official `openai` client against the real
server: answers are transformers' greedy continuation of the chat template's rendering of the
conversation (hf_greedy, no engine code); the typed event stream, stored responses and
previous_response_id (with the KV kept, and evicted), function tools and text.format as
OpenAI's API reference describes them."""
from __future__ import annotations

import json

import httpx
import openai
import pydantic
import pytest

from http_server import serving
from inference_engine.config import EngineConfig
from inference_engine.tokenizer import apply_chat_template, decode
from test_lossless_models import hf_chat_greedy

TOOL = {"type": "function", "name": "get_weather", "description": "Current weather in a city", "parameters": {
    "type": "object", "required": ["city"], "properties": {"city": {"type": "string", "maxLength": 12}}}}


@pytest.fixture(scope="module")
def live(tiny_loaded):
    with serving(tiny_loaded) as (server, _):
        yield server


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)


def _text(loaded, tokens) -> str:
    return decode(loaded.tokenizer, tokens)


def test_text_answer_is_transformers_greedy(client, tiny_loaded):
    r = client.responses.create(model=tiny_loaded.info.name, input="What is the weather in Paris?",
                                instructions="Be brief.", max_output_tokens=12, temperature=0)
    prompt, ref = hf_chat_greedy(tiny_loaded, [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "What is the weather in Paris?"}], 12)
    assert r.object == "response" and r.id.startswith("resp_") and r.output_text == _text(tiny_loaded, ref)
    assert [i.type for i in r.output] == ["message"] and r.output[0].role == "assistant"
    assert r.status == ("incomplete" if len(ref) == 12 and ref[-1] not in tiny_loaded.info.eos_ids else "completed")
    assert (r.usage.input_tokens, r.usage.output_tokens) == (len(prompt), len(ref))
    short = client.responses.create(model=tiny_loaded.info.name, input="Hi", max_output_tokens=2, temperature=0)
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens"


def test_stream_events_and_sequence_numbers(client, live, tiny_loaded):
    kw = dict(model=tiny_loaded.info.name, input="Tell me a story.", max_output_tokens=12, temperature=0)
    whole = client.responses.create(**kw)
    with client.responses.stream(**kw) as s:
        events = list(s)
    final = events[-1].response  # response.incomplete here (max_output_tokens): the client's final is for .completed
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == final.output_text == whole.output_text and final.status == whole.status
    raw = httpx.post(live.url + "/v1/responses", json={**kw, "stream": True}, timeout=60).text
    events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete" if whole.status == "incomplete" else "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [line[7:] for line in raw.splitlines() if line.startswith("event: ")] == kinds  # event names match types


@pytest.mark.parametrize("evict", [False, True], ids=["kv-kept", "kv-evicted"])
def test_previous_response_id_continues_the_conversation(tiny_loaded, evict):
    """The follow-up prefills only its new input while the KV is kept, and answers the same from the
    stored items when the KV was evicted (a byte budget too small to keep it)."""
    config = EngineConfig(session_cache_bytes=1 if evict else 1 << 30)
    with serving(tiny_loaded, config) as (server, _):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        first = client.responses.create(model=tiny_loaded.info.name, input="Name a colour.", max_output_tokens=6,
                                        temperature=0)
        second = client.responses.create(model=tiny_loaded.info.name, input="And a fruit?", max_output_tokens=6,
                                         temperature=0, previous_response_id=first.id)
    chat = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "And a fruit?"}]
    prompt, ref = hf_chat_greedy(tiny_loaded, chat, 6)
    assert second.output_text == _text(tiny_loaded, ref) and second.usage.input_tokens == len(prompt)
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached == 0 if evict else cached >= first.usage.input_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_function_tool_loop(client, tiny_loaded, stream):
    kw = dict(model=tiny_loaded.info.name, input="What is the weather in Paris?", tools=[TOOL], temperature=0,
              tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=60)
    if stream:
        with client.responses.stream(**kw) as s:
            r = s.get_final_response()
    else:
        r = client.responses.create(**kw)
    calls = [i for i in r.output if i.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and len(json.loads(calls[0].arguments)["city"]) <= 12
    follow = client.responses.create(model=tiny_loaded.info.name, previous_response_id=r.id, tools=[TOOL],
                                     max_output_tokens=4, input=[{"type": "function_call_output",
                                                                  "call_id": calls[0].call_id, "output": "18 C, sunny"}])
    chat = [{"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": calls[0].call_id, "type": "function", "function": {
                "name": "get_weather", "arguments": calls[0].arguments}}]},
            {"role": "tool", "tool_call_id": calls[0].call_id, "content": "18 C, sunny"}]
    tools = [{"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}]
    prompt = apply_chat_template(tiny_loaded.tokenizer, chat, tools=tools)
    assert follow.usage.input_tokens == len(prompt)
    assert "<tool_response>\n18 C, sunny\n</tool_response>" in tiny_loaded.tokenizer.decode(prompt)


class Bounded(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    age: int = pydantic.Field(ge=0, le=150)


def test_parse_with_text_format(client, tiny_loaded):
    r = client.responses.parse(model=tiny_loaded.info.name, input="Who are you?", text_format=Bounded,
                               max_output_tokens=200, temperature=0)
    assert isinstance(r.output_parsed, Bounded) and r.status == "completed"


def test_stored_responses_get_delete_and_input_items(client, tiny_loaded):
    r = client.responses.create(model=tiny_loaded.info.name, input=[
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
        max_output_tokens=3)
    assert client.responses.retrieve(r.id).output_text == r.output_text
    items = client.responses.input_items.list(r.id)
    assert [(i.role, i.content[0].text) for i in items.data] == [("developer", "Be brief."), ("user", "Hi")]
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model=tiny_loaded.info.name, input="x", previous_response_id=r.id)
    assert e.value.body["param"] == "previous_response_id"
    unstored = client.responses.create(model=tiny_loaded.info.name, input="Hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_a_response_is_invisible_to_another_key(tiny_loaded):
    with serving(tiny_loaded, api_keys=("key-a", "key-b")) as (server, _):
        a, b = (openai.OpenAI(base_url=server.url + "/v1", api_key=k, max_retries=0) for k in ("key-a", "key-b"))
        r = a.responses.create(model=tiny_loaded.info.name, input="Hi", max_output_tokens=2)
        assert a.responses.retrieve(r.id).id == r.id
        with pytest.raises(openai.NotFoundError):
            b.responses.retrieve(r.id)
        with pytest.raises(openai.NotFoundError):
            b.responses.create(model=tiny_loaded.info.name, input="x", previous_response_id=r.id)


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"background": True}, "background"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://127.0.0.1/x.png"}]}]},
     "input.0.content.0.type"),
    ({"include": ["file_search_call.results"]}, "include"),
    ({"truncation": "auto"}, "truncation"),
    ({"conversation": "conv_1"}, "conversation"),
])
def test_unsupported_features_are_refused_by_name(live, tiny_loaded, extra, param):
    body = {"model": tiny_loaded.info.name, "input": "Hi", "max_output_tokens": 2, **extra}
    r = httpx.post(live.url + "/v1/responses", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
