"""Responses bodies → the chat request the OpenAI edge already serves, converted once: items become
chat messages (function calls join the assistant turn before them, outputs become tool turns,
reasoning goes back to the template), `text.format` becomes response_format, and the
conversation's cache key keeps its KV in a session between responses."""
from __future__ import annotations

import uuid
from typing import Any, Optional

from ..schemas import ChatCompletionRequest, chat_request
from .schemas import (AllowedTools, FunctionCallItem, FunctionCallOutputItem, MessageItem, NamedFunction,
                      ReasoningItem, ResponsesRequest)
from .store import Stored

PREFIX = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_", "reasoning": "rs_"}


def new_id(kind: str) -> str:
    return PREFIX[kind] + uuid.uuid4().hex[:24]


def cache_key(body: ResponsesRequest, previous: Optional[Stored]) -> Optional[str]:
    """The conversation's KV session: the client's prompt_cache_key, else the one the conversation's
    first stored response got; a response that is not stored and has no key keeps none."""
    if body.prompt_cache_key:
        return body.prompt_cache_key
    if previous is not None:
        return previous.cache_key
    return "conv_" + uuid.uuid4().hex if body.store else None


def input_items(body: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as items with ids, as GET …/input_items lists them."""
    if isinstance(body.input, str):
        items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": body.input}]}]
    else:
        items = [i.model_dump(by_alias=True, exclude_none=True) for i in body.input]
    for i in items:  # listed as OpenAI lists them: a message's content is always parts
        if i["type"] == "message" and isinstance(i["content"], str):
            i["content"] = [{"type": "output_text" if i["role"] == "assistant" else "input_text", "text": i["content"]}]
    return [{"id": new_id(i["type"]), **i} for i in items]


def to_chat(body: ResponsesRequest, conversation: list[dict[str, Any]], cache_key: Optional[str]) -> ChatCompletionRequest:
    """`conversation`: every item so far (the previous response's, then this input); `cache_key`
    names the session that keeps its KV (None: the prefix cache only)."""
    chat: dict[str, Any] = {"messages": _messages(body.instructions, conversation), "stream": body.stream,
                            "max_tokens": body.max_output_tokens, "temperature": body.temperature, "top_p": body.top_p,
                            "speculative": body.speculative, "kv_window": body.kv_window,
                            "prompt_cache_key": cache_key}
    if body.tools:
        chat["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type", "strict"}, exclude_none=True)}
                         for t in body.tools]
    choice = body.tool_choice
    if isinstance(choice, NamedFunction):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif isinstance(choice, AllowedTools):
        chat["tool_choice"] = {"type": "allowed_tools", "allowed_tools": {
            "mode": choice.mode, "tools": [{"type": "function", "function": {"name": t.name}} for t in choice.tools]}}
    elif choice is not None:
        chat["tool_choice"] = choice
    chat["parallel_tool_calls"] = body.parallel_tool_calls
    fmt = body.text.format if body.text else None
    if fmt is not None and fmt.type == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.name or "response", "schema": fmt.schema_, "strict": fmt.strict}}
    elif fmt is not None:
        chat["response_format"] = {"type": fmt.type}
    if body.reasoning is not None and body.reasoning.effort is not None:
        chat["reasoning_effort"] = "high" if body.reasoning.effort == "xhigh" else body.reasoning.effort
    return chat_request({k: v for k, v in chat.items() if v is not None}, "input")


def _messages(instructions: Optional[str], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    reasoning = ""  # a reasoning item belongs to the assistant turn that follows it
    for raw in items:
        item = _parse(raw)
        if isinstance(item, ReasoningItem):
            reasoning += item.text
        elif isinstance(item, MessageItem) and item.role != "assistant":
            out.append({"role": "system" if item.role == "developer" else item.role, "content": _text(item.content)})
        elif isinstance(item, FunctionCallOutputItem):
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output)})
        else:  # an assistant message or a call: the current assistant turn, or a new one
            turn = out[-1] if out and out[-1]["role"] == "assistant" and isinstance(item, FunctionCallItem) else None
            if turn is None:
                turn = {"role": "assistant", "content": ""}
                out.append(turn)
            if reasoning:
                turn["reasoning_content"], reasoning = reasoning, ""
            if isinstance(item, MessageItem):
                turn["content"] += _text(item.content)
            else:
                turn.setdefault("tool_calls", []).append(
                    {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}})
    return out


def _parse(raw: dict[str, Any]):
    kind = {"message": MessageItem, "function_call": FunctionCallItem, "function_call_output": FunctionCallOutputItem,
            "reasoning": ReasoningItem}[raw["type"]]
    return kind.model_validate(raw)


def _text(content) -> str:
    return content if isinstance(content, str) else "".join(p.text for p in content)
