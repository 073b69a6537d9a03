"""Engine output as an Anthropic message, whole or as its event stream (message_start,
content_block_start / _delta / _stop per block, message_delta, message_stop). The text goes through
the same OutputParser as chat: Qwen3 reasoning → `thinking`, calls → `tool_use`, the rest → `text`."""
from __future__ import annotations

import json
import uuid
from typing import AsyncIterator, Callable, Optional

from ...errors import EngineError
from ..errors import anthropic_body
from ..generation import ChoiceEnd, Delta, Piece, merge_choices, whole
from ..parsers import OutputParser, Parsed
from ..responses import peer_stats, spec_dict

def stop_reason(end: ChoiceEnd, called: bool) -> str:
    if end.finish_reason == "length":
        return "max_tokens"
    if end.stop_sequence is not None:
        return "stop_sequence"
    return "tool_use" if called else "end_turn"


def _input(arguments: str) -> dict:
    """A call's arguments as the object Anthropic's tool_use carries ({} for a call cut mid-JSON)."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _tool_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


class Message:
    """One request's answer (Anthropic has no `n`)."""

    def __init__(self, model: str, prompt_len: int, tools: bool):
        self.model, self.prompt_len = model, prompt_len
        self.id = "msg_" + uuid.uuid4().hex[:24]
        self.parser = OutputParser(tools)

    def usage(self, end: Optional[ChoiceEnd]) -> dict:
        """Anthropic counts cached prompt tokens apart: input_tokens is the part that was prefilled."""
        cached = end.cached_tokens if end else 0
        return {"input_tokens": self.prompt_len - cached, "output_tokens": end.completion_tokens if end else 0,
                "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0,
                "speculative": spec_dict(end.spec) if end else None}

    async def collect(self, streams: list[AsyncIterator[Piece]], echo=None) -> tuple[dict, list[ChoiceEnd]]:
        text, end = await whole(streams)
        p = self.parser.parse_all(text)
        content = ([{"type": "thinking", "thinking": p.reasoning, "signature": ""}] if p.reasoning else []) + \
                  ([{"type": "text", "text": p.content}] if p.content else []) + \
                  [{"type": "tool_use", "id": _tool_id(c["id"]), "name": c["function"]["name"],
                    "input": _input(c["function"]["arguments"])} for c in p.tool_calls]
        body = {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": stop_reason(end, bool(p.tool_calls)), "stop_sequence": end.stop_sequence,
                "usage": self.usage(end), **peer_stats(self.prompt_len, [end])}
        return body, [end]

    # -- streaming ----------------------------------------------------------------------

    async def stream(self, streams: list[AsyncIterator[Piece]], include_usage: bool,
                     on_done: Callable[[list[ChoiceEnd]], None], echo=None) -> AsyncIterator[dict]:
        self.parser.stream_args = True
        self.open: Optional[str] = None  # the kind of the block being streamed
        self.index = -1
        self.called = False
        yield _event("message_start", message={
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.prompt_len, "output_tokens": 0}})
        yield _event("ping")
        async for _, piece in merge_choices(streams):
            if isinstance(piece, Delta):
                for e in self._deltas(self.parser.push(piece.text)):
                    yield e
                continue
            for e in self._deltas(self.parser.flush()):
                yield e
            if self.open is not None:
                yield _event("content_block_stop", index=self.index)
            yield _event("message_delta", delta={"stop_reason": stop_reason(piece, self.called),
                                                 "stop_sequence": piece.stop_sequence}, usage=self.usage(piece),
                         **peer_stats(self.prompt_len, [piece]))
            yield _event("message_stop")
            on_done([piece])

    def _deltas(self, p: Parsed) -> list[dict]:
        out = []
        if p.reasoning:
            out += self._block("thinking", {"thinking": "", "signature": ""})
            out.append(_event("content_block_delta", index=self.index, delta={"type": "thinking_delta", "thinking": p.reasoning}))
        if p.content:
            out += self._block("text", {"text": ""})
            out.append(_event("content_block_delta", index=self.index, delta={"type": "text_delta", "text": p.content}))
        for c in p.tool_calls or ():
            if "id" in c:  # a new call: its own block
                self.called = True
                out += self._block("tool_use", {"id": _tool_id(c["id"]), "name": c["function"]["name"], "input": {}},
                                   new=True)
            if c["function"].get("arguments"):
                out.append(_event("content_block_delta", index=self.index,
                                  delta={"type": "input_json_delta", "partial_json": c["function"]["arguments"]}))
        return out

    def _block(self, kind: str, start: dict, new: bool = False) -> list[dict]:
        """Events that make `kind` the open block (closing the one before), if it is not already."""
        if self.open == kind and not new:
            return []
        out = [_event("content_block_stop", index=self.index)] if self.open is not None else []
        self.open, self.index = kind, self.index + 1
        return out + [_event("content_block_start", index=self.index, content_block={"type": kind, **start})]

    @staticmethod
    def error_event(e: BaseException) -> dict:
        if isinstance(e, EngineError):
            return {"event": "error", "data": json.dumps(anthropic_body(e.http_status, e.message, e.param))}
        return {"event": "error", "data": json.dumps(anthropic_body(500, f"internal error: {type(e).__name__}"))}

    last_event = None  # no [DONE]: message_stop ends the stream


def _event(kind: str, **fields) -> dict:
    return {"event": kind, "data": json.dumps({"type": kind, **fields}, ensure_ascii=False)}
