"""Typed engine errors and the mapping tables each transport uses.

Every client-visible failure is an EngineError subclass; the HTTP edge maps it
once (status, OpenAI error type, code) and the gRPC edge once (status code name).
"""
from __future__ import annotations


class EngineError(Exception):
    """Base of every error a client may see. `param` names the offending field."""

    http_status = 500
    openai_type = "server_error"
    code: str | None = None
    grpc_code = "INTERNAL"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(EngineError):
    http_status, openai_type, code, grpc_code = 400, "invalid_request_error", None, "INVALID_ARGUMENT"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ModelNotFound(EngineError):
    http_status, openai_type, code, grpc_code = 404, "invalid_request_error", "model_not_found", "NOT_FOUND"


class ModelLoadError(EngineError):
    """The model named by --model cannot be found or loaded; the message says how to fix it."""

    http_status, openai_type, code, grpc_code = 503, "server_error", "model_load_error", "UNAVAILABLE"


class Unauthenticated(EngineError):
    http_status, openai_type, code, grpc_code = 401, "authentication_error", "invalid_api_key", "UNAUTHENTICATED"


class PayloadTooLarge(EngineError):
    http_status, openai_type, code, grpc_code = 413, "invalid_request_error", "payload_too_large", "RESOURCE_EXHAUSTED"


class Overloaded(EngineError):
    http_status, openai_type, code, grpc_code = 429, "rate_limit_error", "queue_full", "RESOURCE_EXHAUSTED"


class EngineDead(EngineError):
    http_status, openai_type, code, grpc_code = 503, "server_error", "engine_unavailable", "UNAVAILABLE"


class ShuttingDown(EngineDead):
    """The server is draining after SIGTERM/SIGINT: no new work, in-flight work ends within the grace period."""

    code = "shutting_down"


class StepFailed(EngineError):
    """The forward step carrying this request failed; the engine dropped it and keeps serving the rest."""

    http_status, openai_type, code, grpc_code = 500, "server_error", "engine_step_failed", "INTERNAL"


class SessionNotFound(EngineError):
    http_status, openai_type, code, grpc_code = 404, "invalid_request_error", "session_not_found", "NOT_FOUND"


class SessionBusy(EngineError):
    """A second generate on a session whose previous generate has not finished."""

    http_status, openai_type, code, grpc_code = 409, "invalid_request_error", "session_busy", "FAILED_PRECONDITION"


class TooManySessions(Overloaded):
    code = "too_many_sessions"
