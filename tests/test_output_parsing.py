"""Qwen3 reasoning and tool-call parsing on real Qwen3-format text, streamed token by token
through the real tokenizer, and assembled into OpenAI responses (whole and streamed)."""
from __future__ import annotations

import asyncio
import json
import re

import pytest

from inference_engine.http.generation import ChoiceEnd, Delta
from inference_engine.http.parsers import OutputParser
from inference_engine.http.responses import Completion
from inference_engine.tokenizer import StreamingDetokenizer

THINKING = "<think>\nThe user wants the weather. I should call the tool.\n</think>\n\n"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
ANSWER = "Paris is sunny today ☀️, 21 °C."


def _deltas(tokenizer, text):
    """The text as the server sees it: one detokenized delta per generated token."""
    detok = StreamingDetokenizer(tokenizer)
    out = [detok.push(t) for t in tokenizer(text)["input_ids"]] + [detok.flush()]
    return [d for d in out if d]


def _parse(tokenizer, text, tools):
    p = OutputParser(tools)
    content, reasoning, calls = "", "", []
    for d in _deltas(tokenizer, text) + [None]:
        part = p.flush() if d is None else p.push(d)
        content, reasoning = content + part.content, reasoning + part.reasoning
        calls += part.tool_calls or []
    return content, reasoning, calls


def test_reasoning_then_answer(qwen3_tokenizer):
    content, reasoning, calls = _parse(qwen3_tokenizer, THINKING + ANSWER, tools=False)
    assert reasoning == "\nThe user wants the weather. I should call the tool.\n"
    assert content == ANSWER and calls == []


def test_tool_call_with_reasoning(qwen3_tokenizer):
    content, reasoning, calls = _parse(qwen3_tokenizer, THINKING + CALL, tools=True)
    assert reasoning.strip().startswith("The user wants") and content == ""
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")


def test_two_tool_calls_and_text(qwen3_tokenizer):
    text = "Let me check.\n" + CALL + "\n" + CALL.replace("Paris", "Oslo")
    content, _, calls = _parse(qwen3_tokenizer, text, tools=True)
    assert content.strip() == "Let me check." and [c["index"] for c in calls] == [0, 1]
    assert json.loads(calls[1]["function"]["arguments"])["city"] == "Oslo"


def test_close_tag_inside_a_json_string_is_text(qwen3_tokenizer):
    """A call's string argument may contain the close tag's text (SmolLM2 wrote one, since that tag
    is plain text in its vocabulary): the call ends at the tag outside the JSON strings."""
    text = '<tool_call>\n{"name": "note", "arguments": {"text": "a \\"</tool_call>\\" b"}}\n</tool_call>\nDone.'
    content, _, calls = _parse(qwen3_tokenizer, text, tools=True)
    assert json.loads(calls[0]["function"]["arguments"]) == {"text": 'a "</tool_call>" b'}
    assert len(calls) == 1 and content == "Done."


def test_blank_lines_around_calls_are_not_content(qwen3_tokenizer):
    content, _, calls = _parse(qwen3_tokenizer, "\n" + CALL + "\n\n" + CALL + "\n", tools=True)
    assert content == "" and len(calls) == 2  # the response's content is then null, as OpenAI's
    assert _parse(qwen3_tokenizer, "\n\nHi.\n", tools=True)[0] == "\n\nHi.\n"  # blank lines in text stay


def test_tools_off_leaves_tags_as_content(qwen3_tokenizer):
    content, _, calls = _parse(qwen3_tokenizer, CALL, tools=False)
    assert content == CALL and calls == []


def test_unclosed_reasoning_loses_nothing(qwen3_tokenizer):
    assert _parse(qwen3_tokenizer, "<think>still thinking", tools=False)[1] == "still thinking"


def _calls(text: str, stream: bool) -> tuple[str, list[tuple[str, str]]]:
    """(content, [(name, arguments)]) as a client assembles them: streamed one character at a time
    (a head delta, then argument pieces) or parsed whole."""
    parser, content, calls = OutputParser(True, stream_args=stream), "", {}
    for part in [parser.push(c) for c in text] if stream else [parser.push(text)]:
        content += part.content
        for c in part.tool_calls or []:
            calls.setdefault(c["index"], ["", ""])
            calls[c["index"]][0] += c["function"].get("name", "")
            calls[c["index"]][1] += c["function"]["arguments"]
    end = parser.flush()
    for c in end.tool_calls or []:
        calls.setdefault(c["index"], ["", ""])
        calls[c["index"]][0] += c["function"].get("name", "")
        calls[c["index"]][1] += c["function"]["arguments"]
    return content + end.content, [tuple(v) for _, v in sorted(calls.items())]


@pytest.mark.parametrize("stream", [False, True])
def test_call_cut_by_the_length_limit(stream):
    """Wherever the output ends inside a call (max_tokens), the call comes out the same streamed or
    not: with the arguments written up to the cut (as OpenAI returns a call cut at finish_reason
    length), or not at all while its name is incomplete; never as markup in content."""
    full = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "n": {"k": 3}}}\n</tool_call>'
    head_end = full.index('"arguments":') + len('"arguments":')
    own_brace = full.rindex("}\n</tool_call>")  # the call object's closing brace
    for cut in range(full.index("<"), len(full)):
        content, calls = _calls(full[:cut], stream)
        assert content.strip() == "Sure.", (cut, content)
        assert all(c["type"] == "function" and re.fullmatch(r"call_[0-9a-f]{24}", c["id"])
                   for c in _full(full[:cut], stream)[2])
        expected = [] if cut < head_end else [("get_weather", full[head_end:min(cut, own_brace)].strip())]
        assert calls == expected, (cut, calls)
    assert _calls(full, stream)[1] == [("get_weather", '{"city": "Paris", "n": {"k": 3}}')]


def test_malformed_tool_json_is_kept_raw(qwen3_tokenizer):
    _, _, calls = _parse(qwen3_tokenizer, "<tool_call>\nnot json\n</tool_call>", tools=True)
    assert calls[0]["function"] == {"name": "", "arguments": "not json"}


def test_think_tag_later_in_content_is_text(qwen3_tokenizer):
    content, reasoning, _ = _parse(qwen3_tokenizer, "Use the <think> tag like this.", tools=False)
    assert content == "Use the <think> tag like this." and reasoning == ""


async def _pieces(tokenizer, text):
    for d in _deltas(tokenizer, text):
        yield Delta(d)
    yield ChoiceEnd("stop", 5)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_response_shapes(qwen3_tokenizer, stream):
    comp = Completion(True, "m", 10, 1, qwen3_tokenizer, tools=True, want_logprobs=False)
    source = _pieces(qwen3_tokenizer, THINKING + CALL)
    if not stream:
        body, ends = asyncio.run(comp.collect([source]))
        choice = body["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        assert choice["message"]["reasoning_content"].strip().startswith("The user wants")
        assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        return

    async def run():
        return [json.loads(e["data"]) async for e in comp.stream([source], True, lambda ends: None)]

    chunks = asyncio.run(run())
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert reasoning.strip().startswith("The user wants") and {c["index"] for c in calls} == {0}
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    arguments = "".join(c["function"]["arguments"] for c in calls)  # streamed in pieces
    assert len(calls) > 2 and json.loads(arguments)["city"] == "Paris"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_streamed_tool_call_arguments_in_pieces(step):
    """However the text is cut, the pieces join to the arguments exactly: the call's own closing
    brace, the space before </tool_call> and a partial tag are never sent; a call whose JSON
    does not put its name first still arrives, whole, at its close."""
    text = ('Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par is}", "n": {"k": 3}}}\n</tool_call>\n'
            '<tool_call>\n{"arguments": {}, "name": "x"}\n</tool_call>')
    parser, calls, content = OutputParser(True, stream_args=True), {}, ""
    for i in range(0, len(text), step):
        out = parser.push(text[i:i + step])
        content += out.content
        for c in out.tool_calls or []:
            d = calls.setdefault(c["index"], {"name": "", "arguments": "", "pieces": 0})
            d["name"] += c["function"].get("name", "")
            d["arguments"] += c["function"]["arguments"]
            d["pieces"] += 1
    content += parser.flush().content
    assert calls[0]["name"] == "get_weather" and calls[0]["arguments"] == '{"city": "Par is}", "n": {"k": 3}}'
    assert calls[1]["name"] == "x" and calls[1]["arguments"] == "{}" and calls[1]["pieces"] == 1
    assert content.strip() == "Sure." and (step > 40 or calls[0]["pieces"] > 2)


def _full(text: str, stream: bool) -> tuple[str, str, list[dict]]:
    """(content, reasoning, calls) with every call's fields, assembled as a client does."""
    parser, content, reasoning, calls = OutputParser(True, stream_args=stream), "", "", {}
    for part in [parser.push(c) for c in text] + [parser.flush()] if stream else [parser.parse_all(text)]:
        content, reasoning = content + part.content, reasoning + part.reasoning
        for c in part.tool_calls or []:
            entry = calls.setdefault(c["index"], {"arguments": ""})
            entry.update({k: v for k, v in c.items() if k not in ("index", "function")})
            entry["name"] = c["function"].get("name", entry.get("name"))
            entry["arguments"] += c["function"]["arguments"]
    return content, reasoning, [calls[i] for i in sorted(calls)]


CASES = [  # (model text, content, reasoning, [(name, arguments)]): the expected answers, written out
    (THINKING + "Answer.\n", "Answer.\n", "\nThe user wants the weather. I should call the tool.\n", []),
    ("Hi.\n\n" + CALL + "\n\nBye.", "Hi.\n\nBye.", "", [("get_weather", '{"city": "Paris", "unit": "celsius"}')]),
    ("Hi.\n" + CALL + "\n", "Hi.", "", [("get_weather", '{"city": "Paris", "unit": "celsius"}')]),
    ('<tool_call>\n{"name": "a", "arguments": {"t": "x</tool_call>y"}}\n</tool_call>\n'
     '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>', "", "", [("a", '{"t": "x</tool_call>y"}'), ("b", "{}")]),
    ('<tool_call>\n{"arguments": {"x": 1}}\n</tool_call>', "", "", [("", '{"x": 1}')]),  # no name
    ('<tool_call>\n{"name": "f"}\n</tool_call>', "", "", [("f", "{}")]),  # no arguments
    ('<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1}"}\n</tool_call>', "", "", [("f", '{"a": 1}')]),  # as text
    ('<tool_call>\n{"name": "f", "arguments": {"city": "Zürich"}}\n</tool_call>', "", "", [("f", '{"city": "Zürich"}')]),
    ('<tool_call>\n{"name": "f", "arguments": {"a": 1} }\n</tool_call>', "", "", [("f", '{"a": 1}')]),  # space, brace
    ("\n".join([CALL] * 3), "", "", [("get_weather", '{"city": "Paris", "unit": "celsius"}')] * 3),
    (THINKING + "  Indented.", "  Indented.", "\nThe user wants the weather. I should call the tool.\n", []),
    (THINKING + "Xylophones.", "Xylophones.", "\nThe user wants the weather. I should call the tool.\n", []),
    ("<think>still thinking </", "", "still thinking </", []),  # ends inside a would-be close tag
    ("\n<thi", "\n<thi", "", []),  # a would-be <think> at the end is text; a would-be <tool_call> is not
    ("Done.\n<tool_c", "Done.", "", []),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_parsed_output_against_the_expected_answer(case, stream):
    """Each text, whole or one character at a time, gives the answer written out above: content
    (line breaks around calls are not content, a gap before text after a call is), reasoning, and
    calls with OpenAI's fields (index in order, `call_` + 24 hex id, type function)."""
    text, content, reasoning, calls = CASES[case]
    got_content, got_reasoning, got_calls = _full(text, stream)
    assert (got_content, got_reasoning) == (content, reasoning)
    assert [(c["name"], c["arguments"]) for c in got_calls] == calls
    for c in got_calls:
        assert c["type"] == "function" and re.fullmatch(r"call_[0-9a-f]{24}", c["id"]), c


def test_reasoning_streams_as_it_comes_and_tags_without_tools_are_text():
    parser = OutputParser(True, stream_args=True)
    early = "".join(parser.push(c).reasoning for c in "<think>\nLet me see")
    assert early == "\nLet me see"  # before any close tag
    assert OutputParser(False).parse_all("<").content == "<"
