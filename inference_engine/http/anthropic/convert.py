"""Anthropic Messages bodies → the chat request the OpenAI edge already serves, converted once:
the same template, tool convention, grammar for forced calls, sessions and admission."""
from __future__ import annotations

import json
from typing import Any, Union

from ...errors import InvalidRequest
from ..schemas import ChatCompletionRequest, chat_request
from .schemas import CountTokensRequest, MessagesRequest, TextBlock, ThinkingBlock, ToolResultBlock, ToolUseBlock

_CHOICE = {"auto": "auto", "any": "required", "none": "none"}


def to_chat(body: Union[MessagesRequest, CountTokensRequest]) -> ChatCompletionRequest:
    """The chat request for this body. Anthropic's defaults where they differ from OpenAI's: thinking
    is off unless asked for; a forced call is one call unless disable_parallel_tool_use is false."""
    chat: dict[str, Any] = {"messages": _messages(body), "chat_template_kwargs": {
        "enable_thinking": body.thinking is not None and body.thinking.type != "disabled"}}
    if body.tools:
        chat["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                                           "parameters": t.input_schema}} for t in body.tools]
    choice = body.tool_choice
    if choice is not None:
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}} if choice.type == "tool" \
            else _CHOICE[choice.type]
        if choice.disable_parallel_tool_use is not None:
            chat["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    if isinstance(body, MessagesRequest):
        if body.metadata is not None and body.metadata.user_id:  # Claude Code: one id per conversation
            chat["prompt_cache_key"] = body.metadata.user_id
        if body.output_config is not None and body.output_config.format is not None:
            chat["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": body.output_config.format.schema_}}
        chat.update(max_tokens=body.max_tokens, temperature=body.temperature, stream=body.stream,
                    top_p=body.top_p, top_k=body.top_k, session_id=body.session_id,
                    speculative=body.speculative, kv_window=body.kv_window)
    req = chat_request(chat, "messages")
    if isinstance(body, MessagesRequest) and body.stop_sequences:
        req.stop = list(body.stop_sequences)  # any number: chat's limit of 4 is OpenAI's, not Anthropic's
    return req


def _messages(body: CountTokensRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if body.system:
        out.append({"role": "system", "content": _text(body.system)})
    for i, m in enumerate(body.messages):
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
        elif m.role == "user":
            out.extend(_user(m.content, i))
        else:
            out.append(_assistant(m.content, i))
    return out


def _user(blocks: list, i: int) -> list[dict[str, Any]]:
    """Tool results become tool turns (an error marked as one), in order; text blocks one user turn."""
    out, texts = [], []
    for j, b in enumerate(blocks):
        if isinstance(b, ToolResultBlock):
            text = _text(b.content)
            out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": f"Error: {text}" if b.is_error else text})
        elif isinstance(b, TextBlock):
            texts.append(b.text)
        else:
            raise InvalidRequest(f"a user message cannot carry a {b.type} block", f"messages.{i}.content.{j}.type")
    if texts:
        out.append({"role": "user", "content": "\n\n".join(texts)})
    if not out:
        raise InvalidRequest("a user message needs content", f"messages.{i}.content")
    return out


def _assistant(blocks: list, i: int) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(b.text for b in blocks if isinstance(b, TextBlock))}
    thinking = "".join(b.thinking for b in blocks if isinstance(b, ThinkingBlock))
    if thinking:
        msg["reasoning_content"] = thinking  # the template keeps or drops it (Qwen3 keeps the last turn's)
    calls = [b for b in blocks if isinstance(b, ToolUseBlock)]
    if calls:
        msg["tool_calls"] = [{"id": b.id, "type": "function", "function": {
            "name": b.name, "arguments": json.dumps(b.input, ensure_ascii=False)}} for b in calls]
    for j, b in enumerate(blocks):
        if isinstance(b, ToolResultBlock):
            raise InvalidRequest("an assistant message cannot carry a tool_result block", f"messages.{i}.content.{j}.type")
    return msg


def _text(content: Union[str, list[TextBlock]]) -> str:
    return content if isinstance(content, str) else "\n\n".join(b.text for b in content)
