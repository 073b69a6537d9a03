"""Every failure as an OpenAI error envelope (Anthropic's error shape under /v1/messages), from the one
mapping on EngineError."""
from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import EngineError, Overloaded


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# HTTP status → Anthropic's error type (https://docs.anthropic.com/en/api/errors)
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 409: "invalid_request_error", 413: "request_too_large",
                   429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def anthropic_body(status: int, message: str, param: str | None = None) -> dict:
    """Anthropic's shape has no `param`: the field a 400 is about leads the message instead."""
    kind = ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if param and not message.startswith(param):
        message = f"{param}: {message}"
    return {"type": "error", "error": {"type": kind, "message": message}}


def _shaped(path: str, body: dict, status: int, headers=None) -> JSONResponse:
    """The error in the shape of the API the path belongs to (Anthropic's under /v1/messages)."""
    if path.startswith("/v1/messages"):
        body = anthropic_body(status, body["error"]["message"], body["error"].get("param"))
    return JSONResponse(body, status_code=status, headers=headers)


def engine_error_body(e: EngineError) -> dict:
    return envelope(e.message, e.openai_type, e.param, e.code)


def engine_error_response(e: EngineError, path: str = "") -> JSONResponse:
    headers = {"Retry-After": "1"} if isinstance(e, Overloaded) else None
    return _shaped(path, engine_error_body(e), e.http_status, headers)


def _param_path(loc) -> list[str]:
    """The field path of an error: pydantic's "body" root and union member tags (`str`,
    `list[int]`, ...) are not fields a client sent, so they are left out."""
    return [str(p) for p in loc if p != "body" and not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p))]


_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none",
               "TextPart", "RefusalPart", "NamedToolChoice", "AllowedToolsChoice"}  # union members that are models


def _validation_response(exc: RequestValidationError, path: str = "") -> JSONResponse:
    errs = exc.errors() or [{"msg": "invalid request", "loc": ()}]
    # Of the errors on the first bad field, the deepest says most (a union reports one per member).
    first = _param_path(errs[0].get("loc", ()))
    err = max((e for e in errs if _param_path(e.get("loc", ()))[:len(first)] == first),
              key=lambda e: len(_param_path(e.get("loc", ()))))
    loc = _param_path(err.get("loc", ()))
    param = ".".join(loc) or None
    if err.get("type") == "json_invalid":
        msg = f"request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}"
    else:
        msg = f"{param or 'body'}: {err['msg']}"
    # OpenAI's code for an absent required field (e.g. a user message without content).
    code = "missing_required_parameter" if err.get("type") == "missing" else None
    return _shaped(path, envelope(msg, "invalid_request_error", param, code), 400)


def install(app: FastAPI) -> None:
    @app.exception_handler(EngineError)
    async def _engine(request: Request, e: EngineError) -> JSONResponse:
        return engine_error_response(e, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        return _validation_response(e, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if e.status_code < 500 else "server_error"
        return _shaped(request.url.path, envelope(str(e.detail), type_), e.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:  # pragma: no cover - last resort
        return _shaped(request.url.path, envelope(f"internal error: {type(e).__name__}", "server_error"), 500)


def sse_error(e: BaseException) -> str:
    """An error after streaming started: sent as an SSE `error` event."""
    body = engine_error_body(e) if isinstance(e, EngineError) else envelope(f"internal error: {e}", "server_error")
    return json.dumps(body)
