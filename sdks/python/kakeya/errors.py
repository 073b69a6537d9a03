"""Typed errors mirroring the server's error table, and the two mappings onto them.

The server raises one typed error per failure and maps it once per transport: an HTTP status
plus an OpenAI envelope `{"error": {"message", "type", "param", "code"}}`, or a gRPC status
code. This module inverts both, so callers write `except SessionBusy:` whether they talk HTTP
or gRPC, and never parse envelopes or status codes themselves.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional

import grpc

__all__ = [
    "KakeyaError", "InvalidRequest", "ContextLengthExceeded", "ModelNotFound", "SessionNotFound",
    "SessionBusy", "Unauthenticated", "PayloadTooLarge", "Overloaded", "TooManySessions", "Unavailable",
    "error_from_http", "error_from_grpc",
]


class KakeyaError(Exception):
    """Base of every error the server reports.

    `status` is the HTTP status the error arrived with (None over gRPC, and for an error sent
    in-band on an SSE stream after the 200 headers); `grpc_code` is the gRPC status name (None
    over HTTP). `code` is the server's machine-readable code (e.g. "session_busy").
    """

    http_status: ClassVar[Optional[int]] = None  # what the server sends for this class (table, not instance)

    def __init__(self, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 status: Optional[int] = None, grpc_code: Optional[str] = None, type: Optional[str] = None,
                 retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status
        self.grpc_code = grpc_code
        self.type = type
        self.retry_after = retry_after  # seconds, from HTTP Retry-After (Overloaded); None otherwise

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.message!r}, code={self.code!r}, param={self.param!r}, "
                f"status={self.status!r}, grpc_code={self.grpc_code!r})")


class InvalidRequest(KakeyaError):
    """The request is malformed or out of range; `param` names the offending field. Fix and resend."""
    http_status = 400


class ContextLengthExceeded(InvalidRequest):
    """Prompt + max_tokens exceed the model's context (HTTP only; gRPC reports InvalidRequest)."""


class ModelNotFound(KakeyaError):
    """The `model` named in the request is not the one this server serves."""
    http_status = 404


class SessionNotFound(KakeyaError):
    """The session was closed, expired or never created."""
    http_status = 404


class SessionBusy(KakeyaError):
    """The session already has a generate in progress; wait for it or cancel it."""
    http_status = 409


class Unauthenticated(KakeyaError):
    """Missing or wrong API key."""
    http_status = 401


class PayloadTooLarge(KakeyaError):
    """The request body exceeds the server's limit."""
    http_status = 413


class Overloaded(KakeyaError):
    """The request queue is full; retry after `retry_after` seconds (HTTP) or with backoff."""
    http_status = 429


class TooManySessions(Overloaded):
    """The server holds its maximum number of sessions; close one or retry later."""


class Unavailable(KakeyaError):
    """The model is still loading, failed to load, the engine died, the server is shutting down
    (or it is unreachable)."""
    http_status = 503


class ServerError(KakeyaError):
    """The server failed this request (e.g. the engine step running it raised); it keeps serving others."""
    http_status = 500


_BY_CODE: dict[str, type[KakeyaError]] = {
    "context_length_exceeded": ContextLengthExceeded,
    "model_not_found": ModelNotFound,
    "session_not_found": SessionNotFound,
    "session_busy": SessionBusy,
    "invalid_api_key": Unauthenticated,
    "payload_too_large": PayloadTooLarge,
    "queue_full": Overloaded,
    "too_many_sessions": TooManySessions,
    "engine_unavailable": Unavailable,
    "model_load_error": Unavailable,
    "shutting_down": Unavailable,
    "engine_step_failed": ServerError,
}

# A status alone is ambiguous only for 404 (model vs session), which is why the code wins;
# 404 without a known code is an unknown route, not a missing model or session.
_BY_STATUS: dict[int, type[KakeyaError]] = {
    400: InvalidRequest, 401: Unauthenticated, 409: SessionBusy, 413: PayloadTooLarge,
    422: InvalidRequest, 429: Overloaded, 500: ServerError, 503: Unavailable,
}

_BY_GRPC: dict[grpc.StatusCode, type[KakeyaError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: SessionNotFound,  # the only NOT_FOUND RuntimeService sends
    grpc.StatusCode.FAILED_PRECONDITION: SessionBusy,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.INTERNAL: ServerError,
}


def _retry_after(headers: Optional[Mapping[str, str]]) -> Optional[float]:
    value = (headers or {}).get("retry-after") or (headers or {}).get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: callers fall back to their own backoff
        return None


def error_from_http(status: Optional[int], body: Any, headers: Optional[Mapping[str, str]] = None) -> KakeyaError:
    """Map an HTTP error (status + OpenAI envelope) to its typed error.

    `status` is None for an error event inside an SSE stream. A body that is not an envelope
    (a proxy's HTML page, say) still yields an error whose message is that body.
    """
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or "")
        code, param, type_ = err.get("code"), err.get("param"), err.get("type")
    else:
        message = body if isinstance(body, str) and body else f"HTTP {status}"
        code = param = type_ = None
    cls = _BY_CODE.get(code or "") or (_BY_STATUS.get(status) if status is not None else None) or KakeyaError
    return cls(message, param=param, code=code, status=status, type=type_,
               retry_after=_retry_after(headers) if issubclass(cls, Overloaded) else None)


def error_from_grpc(e: grpc.RpcError, method: Optional[str] = None) -> KakeyaError:
    """Map a failed RPC to its typed error. `method` (e.g. "CreateSession") disambiguates
    RESOURCE_EXHAUSTED: from CreateSession it means the session capacity is reached."""
    code_fn = getattr(e, "code", None)
    details_fn = getattr(e, "details", None)
    code: Optional[grpc.StatusCode] = code_fn() if callable(code_fn) else None
    message = (details_fn() if callable(details_fn) else None) or str(e)
    cls = _BY_GRPC.get(code, KakeyaError) if code is not None else KakeyaError
    if cls is Overloaded and method == "CreateSession":
        cls = TooManySessions
    return cls(message, grpc_code=code.name if code is not None else None)
