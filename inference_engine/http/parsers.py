"""Qwen3 output structure from streamed text: `<think>…</think>` → reasoning_content,
`<tool_call>{json}</tool_call>` → tool_calls, the rest → content.

Works on deltas so streaming and non-streaming share it. Text that might be the start of a
tag is held back until it is clearly not one (the same rule as stop strings).
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Optional

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
# a call's JSON up to its arguments, name first (the convention's order): what streaming needs
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


@dataclass(slots=True)
class Parsed:
    content: str = ""
    reasoning: str = ""
    tool_calls: Optional[list[dict]] = None


def _partial_suffix(buf: str, tags: list[str]) -> int:
    """Length of the longest suffix of buf that is a proper prefix of some tag."""
    return max((n for t in tags for n in range(min(len(t) - 1, len(buf)), 0, -1) if t.startswith(buf[-n:])), default=0)


def _close_tag(buf: str, close: str, json_body: bool) -> int:
    """Where `close` ends the block in buf, or -1. In a tool call's JSON a close tag inside a string
    (after an odd number of unescaped quotes) is the string's text, not the end of the call."""
    i = buf.find(close)
    while json_body and i >= 0 and len(re.findall(r'(?<!\\)(?:\\\\)*"', buf[:i])) % 2:
        i = buf.find(close, i + 1)
    return i


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"  # OpenAI's form: call_ + 24 characters


def tool_call(body: str, index: int) -> dict:
    """One OpenAI tool call from the JSON inside <tool_call>…</tool_call>; malformed JSON is kept
    as a call whose arguments are the raw text, so nothing the model said is lost."""
    try:
        obj = json.loads(body)
        name, args = obj.get("name", ""), obj.get("arguments", {})
        args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    except (json.JSONDecodeError, AttributeError):
        name, args = "", body.strip()
    return {"index": index, "id": _call_id(), "type": "function",
            "function": {"name": name, "arguments": args}}


class OutputParser:
    def __init__(self, tools: bool, stream_args: bool = False):
        """stream_args: a call's arguments come out in pieces as they are generated (streaming:
        a first delta with id, type and name, then `function.arguments` fragments), not whole."""
        self.tools, self.stream_args = tools, stream_args
        self.call_id: Optional[str] = None  # the call being streamed, once its name is known
        self.args_from = self.args_sent = 0  # where its arguments start in buf, and how far they went out
        self.mode = "content"  # content | reasoning | tool
        self.buf = ""
        self.num_calls = 0
        self.started = False   # any content emitted yet: <think> only counts at the start
        self.after_think = False  # drop the blank lines Qwen3 puts between </think> and the answer
        self.blank = ""  # whitespace-only content held back: dropped if a tool call follows (content null)
        self.after_call = False

    def _open_tags(self) -> list[str]:
        tags = [THINK_OPEN] if not self.started else []
        return tags + ([TOOL_OPEN] if self.tools else [])

    def push(self, delta: str) -> Parsed:
        out = Parsed()
        self.buf += delta
        while True:
            if self.mode == "content":
                tags = self._open_tags()
                hits = [(i, t) for t in tags if (i := self.buf.find(t)) >= 0]
                if hits:
                    i, tag = min(hits)
                    self._content(out, self.buf[:i])
                    self.buf = self.buf[i + len(tag):]
                    self.mode = "reasoning" if tag == THINK_OPEN else "tool"
                    continue
                keep = _partial_suffix(self.buf, tags)
                self._content(out, self.buf[: len(self.buf) - keep])
                self.buf = self.buf[len(self.buf) - keep:]
                return out
            close = THINK_CLOSE if self.mode == "reasoning" else TOOL_CLOSE
            i = _close_tag(self.buf, close, self.mode == "tool")
            if i < 0:
                if self.mode == "reasoning":  # reasoning streams as it comes; tool JSON waits for its close
                    keep = _partial_suffix(self.buf, [close])
                    out.reasoning += self.buf[: len(self.buf) - keep]
                    self.buf = self.buf[len(self.buf) - keep:]
                elif self.stream_args:
                    self._stream_call(out, self.buf, final=False)
                return out
            if self.mode == "reasoning":
                out.reasoning += self.buf[:i]
                self.buf = self.buf[i + len(close):]
                self.after_think = True
            else:
                if self.stream_args and self._stream_call(out, self.buf[:i], final=True):
                    pass
                else:
                    out.tool_calls = (out.tool_calls or []) + [tool_call(self.buf[:i], self.num_calls)]
                self.num_calls += 1
                self.call_id, self.args_from, self.args_sent = None, 0, 0
                self.buf = self.buf[i + len(close):]
                self.after_call = True
            self.mode = "content"

    def _stream_call(self, out: Parsed, body: str, final: bool, cut: bool = False) -> bool:
        """Emit what is new of the call in `body` (the text after <tool_call>): its head once the
        name is known, then argument text, holding back what may be the object's closing brace.
        False when the call is not in name-then-arguments form (it then goes out whole at close)."""
        if self.call_id is None:
            head = _HEAD.match(body)
            if head is None:
                return False
            self.call_id, self.args_from = _call_id(), head.end()
            out.tool_calls = (out.tool_calls or []) + [{
                "index": self.num_calls, "id": self.call_id, "type": "function",
                "function": {"name": json.loads(f'"{head.group(1)}"'), "arguments": ""}}]
        args = body[self.args_from:].lstrip()
        if not final:  # what may be the start of </tool_call> is not sent yet
            args = args[: len(args) - _partial_suffix(args, [TOOL_CLOSE])]
        # trailing space and the last closing brace (perhaps the call's own) wait for what follows;
        # at the end, that brace is the call's and is dropped
        args = args.rstrip()
        if args.endswith("}") and not cut:
            args = args[:-1].rstrip()
        if args.startswith('"'):  # arguments written as a JSON string: its decoded text, sent whole at the end
            if not final:
                return True
            try:
                decoded = json.loads(args)
                args = decoded if isinstance(decoded, str) else args
            except json.JSONDecodeError:  # a string cut by the length limit: as written
                pass
        if len(args) > self.args_sent:
            out.tool_calls = (out.tool_calls or []) + [{"index": self.num_calls,
                                                        "function": {"arguments": args[self.args_sent:]}}]
            self.args_sent = len(args)
        return True

    def _content(self, out: Parsed, text: str) -> None:
        """With tools, trailing whitespace is held back however the text was cut: dropped if a call
        ends the output, kept as the gap before text that follows the call (whose own line break
        after </tool_call> is not content), so whole and streamed answers agree."""
        if self.after_think:
            text = text.lstrip("\n")
            self.after_think = not text
        if self.tools and self.after_call:
            text = text.lstrip()
            self.after_call = not text
        body = text.rstrip() if self.tools else text
        if not body:
            self.blank += text
            return
        out.content += self.blank + body
        self.blank = text[len(body):]
        self.started = self.started or bool(body.strip())

    def parse_all(self, text: str) -> Parsed:
        """A whole output at once: push, then flush, joined."""
        a, b = self.push(text), self.flush()
        return Parsed(a.content + b.content, a.reasoning + b.reasoning, (a.tool_calls or []) + (b.tool_calls or []))

    def flush(self) -> Parsed:
        """End of output: unclosed reasoning is reasoning, a cut call goes out as _cut_call says, and
        a cut open tag with the whitespace before it is dropped; anything else held is content."""
        out, rest, self.buf = Parsed(), self.buf, ""
        cut_open = self.mode == "content" and self.tools and rest and TOOL_OPEN.startswith(rest)  # a call's tag, cut
        if not self.num_calls and not cut_open:  # whitespace before a call is not content
            out.content, self.blank = self.blank, ""
        if self.mode == "reasoning":
            out.reasoning = rest
        elif self.mode == "tool":
            self._cut_call(out, rest)
        elif not cut_open:
            out.content += rest
        return out

    def _cut_call(self, out: Parsed, body: str) -> None:
        """A call the output ended inside (max_tokens) goes out with the arguments written so far,
        as OpenAI returns a call cut by the length limit, and the same streamed or not; one cut
        before its name is complete is dropped (nothing to call). Never raw markup in content."""
        body = body[: len(body) - _partial_suffix(body, [TOOL_CLOSE])]
        try:
            whole = isinstance(json.loads(body), dict)  # only the close tag is missing
        except json.JSONDecodeError:
            whole = False
        if self.stream_args and self.call_id is not None:
            self._stream_call(out, body, final=True, cut=not whole)
        elif whole:
            out.tool_calls = (out.tool_calls or []) + [tool_call(body, self.num_calls)]
        elif (head := _HEAD.match(body)) is not None:
            out.tool_calls = (out.tool_calls or []) + [{
                "index": self.num_calls, "id": _call_id(), "type": "function",
                "function": {"name": json.loads(f'"{head.group(1)}"'), "arguments": body[head.end():].strip()}}]
