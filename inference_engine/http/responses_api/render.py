"""Engine output as a Responses API response: output items (`reasoning`, `message`, `function_call`)
whole, or as the typed event stream with `sequence_number` (response.created … response.completed).
The text goes through the same OutputParser as chat."""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator, Callable, Optional

from ...errors import EngineError
from ..generation import ChoiceEnd, Delta, Piece, merge_choices, whole
from ..parsers import OutputParser, Parsed
from ..responses import peer_stats, spec_dict
from .convert import new_id
from .schemas import ResponsesRequest


class ResponseRender:
    def __init__(self, model: str, prompt_len: int, tokenizer, tools: bool, body: ResponsesRequest,
                 on_complete: Callable[[dict], None]):
        self.model, self.prompt_len, self.tokenizer, self.body = model, prompt_len, tokenizer, body
        self.on_complete = on_complete  # gets the finished response (the route stores it)
        self.id = "resp_" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.parser = OutputParser(tools)
        self.with_encrypted = "reasoning.encrypted_content" in (body.include or ())
        self.seq = 0

    # -- the response object --------------------------------------------------------------

    def response(self, status: str, output: list[dict], end: Optional[ChoiceEnd]) -> dict:
        b = self.body
        choice = b.tool_choice if isinstance(b.tool_choice, str) or b.tool_choice is None else b.tool_choice.model_dump()
        fmt = b.text.format.model_dump(by_alias=True, exclude_none=True) if b.text and b.text.format else {"type": "text"}
        out = {
            "id": self.id, "object": "response", "created_at": self.created, "status": status, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": b.instructions, "max_output_tokens": b.max_output_tokens, "model": self.model,
            "output": output, "parallel_tool_calls": b.parallel_tool_calls is not False,
            "previous_response_id": b.previous_response_id, "prompt_cache_key": b.prompt_cache_key,
            "reasoning": {"effort": b.reasoning.effort if b.reasoning else None, "summary": None},
            "store": b.store, "temperature": 1.0 if b.temperature is None else b.temperature,
            "text": {"format": fmt}, "tool_choice": choice or "auto",
            "tools": [t.model_dump(exclude_none=True) for t in b.tools or ()],
            "top_p": 1.0 if b.top_p is None else b.top_p, "truncation": "disabled", "user": b.user,
            "metadata": b.metadata or {}, "usage": None,
        }
        if end is not None:
            reasoning = "".join(c.get("text", "") for i in output if i["type"] == "reasoning" for c in i["content"])
            n_reason = len(self.tokenizer(reasoning, add_special_tokens=False)["input_ids"]) if reasoning else 0
            out["usage"] = {"input_tokens": self.prompt_len, "input_tokens_details": {"cached_tokens": end.cached_tokens},
                            "output_tokens": end.completion_tokens,
                            "output_tokens_details": {"reasoning_tokens": n_reason},
                            "total_tokens": self.prompt_len + end.completion_tokens, "speculative": spec_dict(end.spec)}
            out.update(peer_stats(self.prompt_len, [end]))
        return out

    def _reasoning_item(self, text: str, status: str) -> dict:
        item = {"id": self.item_ids.setdefault("reasoning", new_id("reasoning")), "type": "reasoning", "summary": [],
                "content": [{"type": "reasoning_text", "text": text}], "status": status}
        if self.with_encrypted:  # not encrypted: the text itself, for clients that send it back (Codex)
            item["encrypted_content"] = text
        return item

    # -- whole ------------------------------------------------------------------------------

    async def collect(self, streams: list[AsyncIterator[Piece]], echo=None) -> tuple[dict, list[ChoiceEnd]]:
        self.item_ids: dict[str, str] = {}
        text, end = await whole(streams)
        p = self.parser.parse_all(text)
        status = "incomplete" if end.finish_reason == "length" else "completed"
        output = ([self._reasoning_item(p.reasoning, "completed")] if p.reasoning else []) + \
                 ([{"id": new_id("message"), "type": "message", "status": "completed", "role": "assistant",
                    "content": [_text_part(p.content)]}] if p.content else []) + \
                 [{"id": new_id("function_call"), "type": "function_call", "status": "completed", "call_id": c["id"],
                   "name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in p.tool_calls]
        if output:  # the item the length limit cut, as the stream reports it
            output[-1]["status"] = status
        body = self.response(status, output, end)
        self.on_complete(body)
        return body, [end]

    # -- streamed ---------------------------------------------------------------------------

    def _event(self, kind: str, **fields) -> dict:
        self.seq += 1
        return {"event": kind, "data": json.dumps({"type": kind, "sequence_number": self.seq - 1, **fields},
                                                  ensure_ascii=False)}

    async def stream(self, streams: list[AsyncIterator[Piece]], include_usage: bool,
                     on_done: Callable[[list[ChoiceEnd]], None], echo=None) -> AsyncIterator[dict]:
        self.parser.stream_args = True
        self.item_ids, self.output, self.current = {}, [], None  # current: the item being streamed
        yield self._event("response.created", response=self.response("in_progress", [], None))
        yield self._event("response.in_progress", response=self.response("in_progress", [], None))
        async for _, piece in merge_choices(streams):
            if isinstance(piece, Delta):
                for e in self._deltas(self.parser.push(piece.text)):
                    yield e
                continue
            status = "incomplete" if piece.finish_reason == "length" else "completed"
            for e in self._deltas(self.parser.flush()) + self._close(status):
                yield e
            body = self.response(status, self.output, piece)
            self.on_complete(body)
            yield self._event("response.completed" if status == "completed" else "response.incomplete", response=body)
            on_done([piece])

    def _deltas(self, p: Parsed) -> list[dict]:
        out = []
        if p.reasoning:
            out += self._open("reasoning")
            self.current["text"] += p.reasoning
            out.append(self._event("response.reasoning_text.delta", item_id=self.current["id"], content_index=0,
                                   output_index=len(self.output), delta=p.reasoning))
        if p.content:
            out += self._open("message")
            self.current["text"] += p.content
            out.append(self._event("response.output_text.delta", item_id=self.current["id"], content_index=0,
                                   output_index=len(self.output), delta=p.content, logprobs=[]))
        for c in p.tool_calls or ():
            if "id" in c:
                out += self._open("function_call", call_id=c["id"], name=c["function"]["name"])
            if c["function"].get("arguments"):
                self.current["text"] += c["function"]["arguments"]
                out.append(self._event("response.function_call_arguments.delta", item_id=self.current["id"],
                                       output_index=len(self.output), delta=c["function"]["arguments"]))
        return out

    def _open(self, kind: str, **call) -> list[dict]:
        """Events that start a `kind` item (closing the one before) unless it is the one streaming."""
        if self.current is not None and self.current["type"] == kind and not call:
            return []
        out = self._close("completed")
        self.current = {"type": kind, "id": new_id(kind), "text": "", **call}
        if kind == "reasoning":
            self.item_ids["reasoning"] = self.current["id"]
        at = len(self.output)
        if kind == "function_call":
            return out + [self._event("response.output_item.added", output_index=at, item={
                "id": self.current["id"], "type": "function_call", "status": "in_progress", "call_id": call["call_id"],
                "name": call["name"], "arguments": ""})]
        item = {"id": self.current["id"], "type": kind, "status": "in_progress",
                **({"role": "assistant", "content": []} if kind == "message" else {"summary": [], "content": []})}
        part = _text_part("") if kind == "message" else {"type": "reasoning_text", "text": ""}
        return out + [self._event("response.output_item.added", output_index=at, item=item),
                      self._event("response.content_part.added", item_id=item["id"], output_index=at, content_index=0,
                                  part=part)]

    def _close(self, status: str) -> list[dict]:
        cur, self.current = self.current, None
        if cur is None:
            return []
        at, text = len(self.output), cur["text"]
        if cur["type"] == "function_call":
            item = {"id": cur["id"], "type": "function_call", "status": status, "call_id": cur["call_id"],
                    "name": cur["name"], "arguments": text}
            events = [self._event("response.function_call_arguments.done", item_id=cur["id"], output_index=at,
                                  arguments=text, name=cur["name"])]
        elif cur["type"] == "message":
            part = _text_part(text)
            item = {"id": cur["id"], "type": "message", "status": status, "role": "assistant", "content": [part]}
            events = [self._event("response.output_text.done", item_id=cur["id"], output_index=at, content_index=0,
                                  text=text, logprobs=[]),
                      self._event("response.content_part.done", item_id=cur["id"], output_index=at, content_index=0,
                                  part=part)]
        else:
            item = self._reasoning_item(text, status)
            events = [self._event("response.reasoning_text.done", item_id=cur["id"], output_index=at, content_index=0,
                                  text=text),
                      self._event("response.content_part.done", item_id=cur["id"], output_index=at, content_index=0,
                                  part={"type": "reasoning_text", "text": text})]
        self.output.append(item)
        return events + [self._event("response.output_item.done", output_index=at, item=item)]

    def error_event(self, e: BaseException) -> dict:
        if isinstance(e, EngineError):
            return self._event("error", code=e.code, message=e.message, param=e.param)
        return self._event("error", code="server_error", message=f"internal error: {type(e).__name__}", param=None)

    last_event = None  # no [DONE]: response.completed / .incomplete ends the stream


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
