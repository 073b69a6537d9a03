"""What /openapi.json says the server answers: the real 200 bodies (as documentation models; the
routes build plain dicts, which the fuzz test checks against these) and the real error statuses
(400 with the OpenAI envelope where FastAPI would advertise its own 422, which we never send)."""
from __future__ import annotations

from typing import Any, Literal, Optional

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # extensions (usage.speculative, token_ids) ride along


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str]
    code: Optional[str]


class ErrorResponse(BaseModel):
    error: ErrorBody


class Usage(_Open):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: Optional[str]
    refusal: None = None
    tool_calls: Optional[list[dict[str, Any]]] = None


class ChatChoice(_Open):
    index: int
    message: AssistantMessage
    logprobs: Optional[dict[str, Any]]
    finish_reason: Literal["stop", "length", "tool_calls", "abort"]


class ChatCompletionResponse(_Open):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str


class TextChoice(_Open):
    index: int
    text: str
    logprobs: Optional[dict[str, Any]]
    finish_reason: Literal["stop", "length", "abort"]


class TextCompletionResponse(_Open):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage
    system_fingerprint: str


class AnthropicErrorBody(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    type: Literal["error"]
    error: AnthropicErrorBody


class AnthropicUsage(_Open):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int


class AnthropicMessage(_Open):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[dict[str, Any]]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]
    stop_sequence: Optional[str]
    usage: AnthropicUsage


class ResponseObject(_Open):
    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    model: str
    output: list[dict[str, Any]]


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"]
    deleted: bool


class InputItems(_Open):
    object: Literal["list"]
    data: list[dict[str, Any]]
    has_more: bool


class TokenCount(BaseModel):
    input_tokens: int


class ModelCard(_Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class SessionResponse(_Open):
    id: str
    object: Literal["session"]
    history_length: int
    kv_cached_tokens: int
    kv_bytes: int
    busy: bool


class SessionDeleted(BaseModel):
    id: str
    object: Literal["session.deleted"]
    deleted: bool


class Health(_Open):
    status: Literal["ok"]
    model: str
    decode_path: str


def _errors(*statuses: int) -> dict:
    return {s: {"model": ErrorResponse, "description": "OpenAI error envelope"} for s in statuses}


SSE = {"text/event-stream": {"schema": {  # one server-sent event: `data: {chunk}` events, then `data: [DONE]`
    "type": "object", "required": ["data"], "description": "`data: {chunk}` events, then `data: [DONE]`",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}}}}}
COMPLETION = {**_errors(400, 401, 404, 409, 413, 429, 503)}
ANTHROPIC = {s: {"model": AnthropicError, "description": "Anthropic error shape"} for s in (400, 401, 404, 409, 413, 429, 503)}
ANTHROPIC_SSE = {"text/event-stream": {"schema": {  # typed events: `event: message_start`, `event: response.created`, …
    "type": "object", "required": ["event", "data"], "description": "typed events (`event:` then `data:`)",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}}}
RESPONSES = {
    "chat": {200: {"model": ChatCompletionResponse, "content": SSE}, **COMPLETION},
    "completions": {200: {"model": TextCompletionResponse, "content": SSE}, **COMPLETION},
    "responses": {200: {"model": ResponseObject, "content": ANTHROPIC_SSE}, **COMPLETION},
    "response": {200: {"model": ResponseObject}, **_errors(401, 404)},
    "response_deleted": {200: {"model": ResponseDeleted}, **_errors(401, 404)},
    "input_items": {200: {"model": InputItems}, **_errors(401, 404)},
    "messages": {200: {"model": AnthropicMessage, "content": ANTHROPIC_SSE}, **ANTHROPIC},
    "count_tokens": {200: {"model": TokenCount}, **{s: ANTHROPIC[s] for s in (400, 401, 404, 413, 503)}},
    "models": {200: {"model": ModelList}, **_errors(401, 503)},
    "model": {200: {"model": ModelCard}, **_errors(401, 404, 503)},
    "session": {200: {"model": SessionResponse}, **_errors(401, 404, 409, 429, 503)},
    "session_deleted": {200: {"model": SessionDeleted}, **_errors(401, 404, 409, 503)},
    "healthz": {200: {"model": Health}, **_errors(503)},
    "metrics": {200: {"description": "Prometheus text format",
                      "content": {"text/plain": {"schema": {"type": "string"}}}}},
}


def install(app: FastAPI) -> None:
    """/openapi.json without FastAPI's 422 entries: validation failures are 400s (errors.py)."""
    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for url, path in doc.get("paths", {}).items():
                error = "AnthropicError" if url.startswith("/v1/messages") else "ErrorResponse"
                for op in path.values():
                    if isinstance(op, dict) and op.get("responses", {}).pop("422", None) is not None:
                        op["responses"].setdefault("400", {"description": "error", "content": {
                            "application/json": {"schema": {"$ref": f"#/components/schemas/{error}"}}}})
            schemas = doc.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
