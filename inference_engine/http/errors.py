"""Every failure as an OpenAI error envelope, from the one mapping on EngineError."""
from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import EngineError, Overloaded


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def engine_error_body(e: EngineError) -> dict:
    return envelope(e.message, e.openai_type, e.param, e.code)


def engine_error_response(e: EngineError) -> JSONResponse:
    headers = {"Retry-After": "1"} if isinstance(e, Overloaded) else None
    return JSONResponse(engine_error_body(e), status_code=e.http_status, headers=headers)


def _param_path(loc) -> list[str]:
    """The field path of an error: pydantic's "body" root and union member tags (`str`,
    `list[int]`, ...) are not fields a client sent, so they are left out."""
    return [str(p) for p in loc if p != "body" and not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p))]


_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none",
               "TextPart", "RefusalPart", "NamedToolChoice", "AllowedToolsChoice"}  # union members that are models


def _validation_response(exc: RequestValidationError) -> JSONResponse:
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
    return JSONResponse(envelope(msg, "invalid_request_error", param, code), status_code=400)


def install(app: FastAPI) -> None:
    @app.exception_handler(EngineError)
    async def _engine(_: Request, e: EngineError) -> JSONResponse:
        return engine_error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        return _validation_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if e.status_code < 500 else "server_error"
        return JSONResponse(envelope(str(e.detail), type_), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception) -> JSONResponse:  # pragma: no cover - last resort
        return JSONResponse(envelope(f"internal error: {type(e).__name__}", "server_error"), status_code=500)


def sse_error(e: BaseException) -> str:
    """An error after streaming started: sent as an SSE `error` event."""
    body = engine_error_body(e) if isinstance(e, EngineError) else envelope(f"internal error: {e}", "server_error")
    return json.dumps(body)
