"""The text edge on the real Qwen3 tokenizer: templates, eos, streaming detokenization, stop strings."""
from __future__ import annotations

import pytest

from inference_engine.tokenizer import (
    StopMatcher,
    StreamingDetokenizer,
    apply_chat_template,
    decode,
    resolve_eos_ids,
)


def _text(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def test_chat_template_system_user_assistant(qwen3_tokenizer):
    msgs = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    ids = apply_chat_template(qwen3_tokenizer, msgs)
    assert all(isinstance(i, int) for i in ids)
    assert _text(qwen3_tokenizer, ids) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_template_enable_thinking(qwen3_tokenizer):
    msgs = [{"role": "user", "content": "2+2?"}]
    off = _text(qwen3_tokenizer, apply_chat_template(qwen3_tokenizer, msgs, enable_thinking=False))
    on = _text(qwen3_tokenizer, apply_chat_template(qwen3_tokenizer, msgs, enable_thinking=True))
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # Qwen3: thinking disabled = empty block
    assert on.endswith("<|im_start|>assistant\n")


def test_chat_template_tools(qwen3_tokenizer):
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                                              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    text = _text(qwen3_tokenizer, apply_chat_template(qwen3_tokenizer, [{"role": "user", "content": "Paris?"}], tools=[tool]))
    assert "<tools>" in text and "get_weather" in text and "<tool_call>" in text


def test_resolve_eos_ids_qwen3(qwen3_tokenizer, tiny_loaded):
    vocab = qwen3_tokenizer.get_vocab()
    im_end, eot = vocab["<|im_end|>"], vocab["<|endoftext|>"]

    class Cfg:  # a config whose eos repeats an id and lists another: order kept, duplicates dropped
        eos_token_id = [im_end, eot, im_end]

    assert resolve_eos_ids(qwen3_tokenizer, Cfg(), None) == [im_end, eot]
    assert resolve_eos_ids(qwen3_tokenizer, None, None) == [im_end, eot]
    assert tiny_loaded.info.eos_ids == (im_end, eot)


@pytest.mark.parametrize(
    "text",
    ["Hello, world!", "emoji 😀👍🏽 and family 👨‍👩‍👧", "中文字符测试，日本語のテキスト", "mixed 漢字 🎉 end"],
)
def test_streaming_detokenizer_deltas_concatenate(qwen3_tokenizer, text):
    ids = qwen3_tokenizer(text)["input_ids"]
    detok = StreamingDetokenizer(qwen3_tokenizer)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == decode(qwen3_tokenizer, ids) == text
    assert not any("\ufffd" in d for d in deltas), "half a UTF-8 character was emitted"


def test_streaming_detokenizer_holds_partial_characters(qwen3_tokenizer):
    # byte-level BPE splits many emoji over several tokens; the first pieces must yield ""
    ids = qwen3_tokenizer("🫠")["input_ids"]
    assert len(ids) > 1
    detok = StreamingDetokenizer(qwen3_tokenizer)
    assert [detok.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.push(ids[-1]) == "🫠"


def test_streaming_detokenizer_special_tokens_are_empty(qwen3_tokenizer):
    vocab = qwen3_tokenizer.get_vocab()
    detok = StreamingDetokenizer(qwen3_tokenizer)
    ids = qwen3_tokenizer("Hi")["input_ids"]
    out = [detok.push(i) for i in ids]
    assert detok.push(vocab["<|im_end|>"]) == ""
    assert "".join(out) == "Hi"


def test_streaming_detokenizer_flushes_truncated_character(qwen3_tokenizer):
    ids = qwen3_tokenizer("ok 😀")["input_ids"][:-1]  # end in the middle of the emoji
    detok = StreamingDetokenizer(qwen3_tokenizer)
    text = "".join(detok.push(i) for i in ids) + detok.flush()
    assert text == decode(qwen3_tokenizer, ids)


def _stream(stops, pieces):
    m = StopMatcher(stops)
    out = []
    for p in pieces:
        out.append(m.push(p))
        if m.stopped:
            break
    out.append(m.flush())
    return "".join(out), m.stopped, out


def test_stop_string_split_across_deltas_never_leaks():
    text, stopped, out = _stream(["STOP"], ["Hello S", "T", "O", "P and more"])
    assert (text, stopped) == ("Hello ", True)
    assert all("S" not in piece for piece in out)


def test_stop_string_false_alarm_is_released():
    text, stopped, _ = _stream(["</end>"], ["a </e", "nd and </", "x> done"])
    assert (text, stopped) == ("a </end and </x> done", False)


def test_stop_string_earliest_of_several():
    text, stopped, _ = _stream(["world", "lo"], ["Hello world"])
    assert (text, stopped) == ("Hel", True)


def test_stop_matcher_without_stops_passes_everything():
    m = StopMatcher([])
    assert m.push("abc") == "abc" and m.flush() == "" and not m.stopped


def test_stop_strings_property_no_prefix_leaks():
    # Exhaustive over every split point: emitted text is always a prefix of the text before the stop.
    full, stop = "The answer is 42.\n\nQuestion: next", "\n\nQuestion:"
    for cut in range(1, len(full)):
        for cut2 in range(cut, len(full)):
            text, stopped, _ = _stream([stop], [full[:cut], full[cut:cut2], full[cut2:]])
            assert stopped and text == "The answer is 42."


def test_stop_strings_against_brute_force():
    """Random texts, stop-string sets and cuts into deltas over a small alphabet (so prefixes and
    overlaps abound), against brute force over the text: however it is cut into deltas, the
    streamed text ends where the first stop string is completed, or is all of it when none is
    (what was held back as a possible prefix is released at the end)."""
    import random

    rng = random.Random(7)
    for _ in range(3000):
        full = "".join(rng.choice("ab\n") for _ in range(rng.randint(0, 14)))
        stops = ["".join(rng.choice("ab\n") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        cuts = sorted(rng.sample(range(len(full) + 1), min(len(full) + 1, rng.randint(0, 4))))
        pieces = [full[i:j] for i, j in zip([0] + cuts, cuts + [len(full)])]
        # as the text grows a character at a time, the first stop string to be complete (the
        # longest of those completed by the same character) is cut with all that follows
        done = [(e, e - len(s)) for e in range(len(full) + 1) for s in stops if full[:e].endswith(s)]
        expected = (full[:min(start for e, start in done if e == done[0][0])], True) if done else (full, False)
        text, stopped, _ = _stream(stops, pieces)
        assert (text, stopped) == expected, (full, stops, pieces)
