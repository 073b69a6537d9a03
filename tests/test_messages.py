"""/v1/messages (Anthropic's Messages API) through the official `anthropic` client against the real
server: the answer is transformers' greedy continuation of the chat template's prompt (hf_greedy,
no engine code), in Anthropic's shapes, whole and streamed; tools, stop sequences, sessions,
count_tokens and errors as Anthropic's API reference describes them."""
from __future__ import annotations

import asyncio
import json

import anthropic
import httpx
import pytest

from http_server import serving
from inference_engine.http.anthropic.render import Message
from inference_engine.http.generation import ChoiceEnd, Delta
from inference_engine.tokenizer import apply_chat_template, decode
from test_lossless_models import hf_chat_greedy

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0}  # anthropic 2.x sends sampling fields only as extra body; the API still takes them
WEATHER = {"name": "get_weather", "description": "Current weather in a city", "input_schema": {
    "type": "object", "required": ["city"], "properties": {"city": {"type": "string", "maxLength": 12}}}}


@pytest.fixture(scope="module")
def live(tiny_loaded):
    with serving(tiny_loaded) as (server, _):
        yield server


@pytest.fixture(scope="module")
def client(live):
    return anthropic.Anthropic(base_url=live.url, api_key="unused", max_retries=0)


def _reference(loaded, messages, max_tokens, system=None) -> list[int]:
    """transformers' greedy tokens for the conversation, with Anthropic's default: no thinking."""
    chat = ([{"role": "system", "content": system}] if system else []) + messages
    return hf_chat_greedy(loaded, chat, max_tokens, enable_thinking=False)[1]


def test_text_answer_is_transformers_greedy(client, tiny_loaded):
    r = client.messages.create(model=tiny_loaded.info.name, max_tokens=16, messages=ASK, extra_body=GREEDY,
                               system="Be brief.")
    ref = _reference(tiny_loaded, ASK, 16, system="Be brief.")
    assert r.type == "message" and r.role == "assistant" and r.id.startswith("msg_")
    assert [b.type for b in r.content] == ["text"] and r.content[0].text == decode(tiny_loaded.tokenizer, ref)
    assert r.stop_reason == ("end_turn" if ref[-1] in tiny_loaded.info.eos_ids else "max_tokens")
    prompt = apply_chat_template(tiny_loaded.tokenizer, [{"role": "system", "content": "Be brief."}] + ASK,
                                 enable_thinking=False)
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.cache_read_input_tokens) == (len(prompt), len(ref), 0)
    counted = client.messages.count_tokens(model=tiny_loaded.info.name, messages=ASK, system="Be brief.")
    assert counted.input_tokens == len(prompt)


def test_stream_events_in_order_and_same_text(client, live, tiny_loaded):
    kw = dict(model=tiny_loaded.info.name, max_tokens=16, messages=ASK)
    whole = client.messages.create(**kw, extra_body=GREEDY)
    with client.messages.stream(**kw, extra_body=GREEDY) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == whole.content[0].text == final.content[0].text and final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    raw = httpx.post(live.url + "/v1/messages", json={**kw, **GREEDY, "stream": True}, timeout=60).text
    kinds = [line[7:] for line in raw.splitlines() if line.startswith("event: ")]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"] and kinds[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[3:-3]) == {"content_block_delta"} and "[DONE]" not in raw


def test_stop_sequences_and_max_tokens(client, tiny_loaded):
    kw = dict(model=tiny_loaded.info.name, messages=ASK, extra_body=GREEDY)
    full = client.messages.create(max_tokens=12, **kw).content[0].text
    stop = full[4:7]
    r = client.messages.create(max_tokens=12, stop_sequences=["\u2603", stop], **kw)
    assert (r.stop_reason, r.stop_sequence, r.content[0].text) == ("stop_sequence", stop, full[: full.index(stop)])
    r = client.messages.create(max_tokens=3, **kw)
    assert r.stop_reason == "max_tokens" and r.usage.output_tokens == 3


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_use_then_result(client, tiny_loaded, stream):
    """tool_choice `tool` is enforced by the grammar: a tool_use block whose input matches the
    schema; the tool_result goes back as the next user turn and the conversation goes on."""
    kw = dict(model=tiny_loaded.info.name, max_tokens=60, extra_body=GREEDY, tools=[WEATHER],
              tool_choice={"type": "tool", "name": "get_weather"})
    if stream:
        with client.messages.stream(messages=ASK, **kw) as s:
            r = s.get_final_message()
    else:
        r = client.messages.create(messages=ASK, **kw)
    uses = [b for b in r.content if b.type == "tool_use"]
    assert r.stop_reason == "tool_use" and len(uses) == 1 and uses[0].id.startswith("toolu_")
    assert uses[0].name == "get_weather" and isinstance(uses[0].input["city"], str) and len(uses[0].input["city"]) <= 12
    follow = ASK + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in r.content]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                                  "content": "18 C, sunny"}]}]
    after = client.messages.create(model=tiny_loaded.info.name, max_tokens=8, messages=follow, tools=[WEATHER])
    assert after.stop_reason in ("end_turn", "max_tokens", "tool_use")
    # the result is in the prompt: the template's rendering of it, counted by count_tokens
    chat = ASK + [{"role": "assistant", "content": "", "tool_calls": [{"id": uses[0].id, "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps(uses[0].input)}}]},
                  {"role": "tool", "tool_call_id": uses[0].id, "content": "18 C, sunny"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": WEATHER["description"],
                                               "parameters": WEATHER["input_schema"]}}]
    prompt = apply_chat_template(tiny_loaded.tokenizer, chat, tools=tools, enable_thinking=False)
    assert after.usage.input_tokens + after.usage.cache_read_input_tokens == len(prompt)
    assert "<tool_response>\n18 C, sunny\n</tool_response>" in tiny_loaded.tokenizer.decode(prompt)


def test_session_reuses_the_conversation_kv(live, tiny_loaded):
    c = anthropic.Anthropic(base_url=live.url, api_key="unused", max_retries=0,
                            default_headers={"X-Session-Id": "anthropic-chat-1"})
    first = c.messages.create(model=tiny_loaded.info.name, max_tokens=6, messages=ASK, extra_body=GREEDY)
    turn2 = ASK + [{"role": "assistant", "content": first.content[0].text}, {"role": "user", "content": "And Rome?"}]
    second = c.messages.create(model=tiny_loaded.info.name, max_tokens=6, messages=turn2, extra_body=GREEDY)
    # reused: what turn 2's prompt shares with turn 1's (Qwen3's template drops the empty think block
    # of an earlier assistant turn, so the sharing ends there)
    one, two = (apply_chat_template(tiny_loaded.tokenizer, m, enable_thinking=False) for m in (ASK, turn2))
    shared = next(i for i, (a, b) in enumerate(zip(one + [-1], two)) if a != b)
    assert second.usage.cache_read_input_tokens == shared > 0
    assert second.usage.input_tokens + shared == len(two)
    ref = _reference(tiny_loaded, turn2, 6)
    assert second.content[0].text == decode(tiny_loaded.tokenizer, ref)


@pytest.mark.parametrize("body, param", [
    ({"messages": ASK}, "max_tokens"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
     "messages.0.content.0.type"),
    ({"max_tokens": 4, "messages": ASK, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     "tools.0.type"),
    ({"max_tokens": 4, "messages": ASK, "mcp_servers": []}, "mcp_servers"),
    ({"max_tokens": 4, "messages": ASK, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}},
     "tool_choice.name"),
])
def test_bad_requests_get_anthropic_errors(live, tiny_loaded, body, param):
    r = httpx.post(live.url + "/v1/messages", json={"model": tiny_loaded.info.name, **body}, timeout=30)
    err = r.json()
    assert r.status_code == 400 and err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["message"].startswith(param), err  # Anthropic's shape has no param: the message leads with it


def test_model_and_key_errors(tiny_loaded):
    with serving(tiny_loaded, api_keys=("sekrit",)) as (server, _):
        ok = anthropic.Anthropic(base_url=server.url, api_key="sekrit", max_retries=0)  # sent as x-api-key
        assert ok.messages.create(model=tiny_loaded.info.name, max_tokens=2, messages=ASK).type == "message"
        with pytest.raises(anthropic.AuthenticationError) as e:
            anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(
                model=tiny_loaded.info.name, max_tokens=2, messages=ASK)
        assert e.value.body["error"]["type"] == "authentication_error"
        with pytest.raises(anthropic.NotFoundError) as e:
            ok.messages.create(model="claude-sonnet-4-5", max_tokens=2, messages=ASK)
        assert e.value.body["error"]["type"] == "not_found_error" and tiny_loaded.info.name in e.value.body["error"]["message"]
        bearer = httpx.post(server.url + "/v1/messages", headers={"Authorization": "Bearer sekrit"}, timeout=30,
                            json={"model": tiny_loaded.info.name, "max_tokens": 2, "messages": ASK})
        assert bearer.status_code == 200


THINK = "<think>\nThe user wants the weather.\n</think>\n\n"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


async def _pieces(text: str):
    for i in range(0, len(text), 3):
        yield Delta(text[i:i + 3])
    yield ChoiceEnd("stop", 9, cached_tokens=4)


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_text_and_tool_use_blocks(stream):
    """Qwen3 output (reasoning, a word, a call) as Anthropic content blocks, the same whole or streamed
    (the stream assembled as the anthropic client's accumulator reads the events)."""
    msg = Message("m", 20, tools=True)
    text = THINK + "Checking." + CALL
    if not stream:
        body, _ = asyncio.run(msg.collect([_pieces(text)]))
    else:
        async def events():
            return [json.loads(e["data"]) async for e in msg.stream([_pieces(text)], False, lambda ends: None)]

        blocks, body = [], {}
        for e in asyncio.run(events()):
            if e["type"] == "content_block_start":
                blocks.append({**e["content_block"], "_json": ""})
            elif e["type"] == "content_block_delta":
                d = e["delta"]
                key = {"thinking_delta": "thinking", "text_delta": "text", "input_json_delta": "_json"}[d["type"]]
                blocks[e["index"]][key] += d[{"_json": "partial_json"}.get(key, key)]
            elif e["type"] == "message_delta":
                body = {**e["delta"], "usage": e["usage"]}
        for b in blocks:
            if b["type"] == "tool_use":
                b["input"] = json.loads(b["_json"])
            b.pop("_json")
        body["content"] = blocks
    kinds = [(b["type"], b.get("thinking") or b.get("text") or b.get("input")) for b in body["content"]]
    assert kinds == [("thinking", "\nThe user wants the weather.\n"), ("text", "Checking."),
                     ("tool_use", {"city": "Paris"})]
    assert body["stop_reason"] == "tool_use" and body["stop_sequence"] is None
    assert (body["usage"]["input_tokens"], body["usage"]["cache_read_input_tokens"], body["usage"]["output_tokens"]) == (16, 4, 9)
