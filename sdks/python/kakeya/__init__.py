"""Kakeya Python SDK: typed clients for a Kakeya inference server.

- `Client` / `AsyncClient`: the OpenAI-compatible HTTP API plus sessions (KV kept between turns).
- `RuntimeClient` / `AsyncRuntimeClient`: the kakeya.v1 gRPC runtime (token-level sessions).
- `KakeyaError` and its subclasses: one typed error per server error, whatever the transport.
"""
from __future__ import annotations

from .async_client import AsyncChatSession, AsyncClient
from .async_runtime import AsyncRuntimeClient, AsyncRuntimeSession
from .client import ChatSession, Client
from .errors import (
    ContextLengthExceeded, InvalidRequest, KakeyaError, ModelNotFound, Overloaded, PayloadTooLarge, SessionBusy,
    ServerError, SessionNotFound, TooManySessions, Unauthenticated, Unavailable, error_from_grpc, error_from_http,
)
from .runtime import RuntimeClient, RuntimeSession
from .runtime_types import (
    Frame, GenerateDone, GenerateOptions, GenerateResult, RuntimeSessionInfo, SpeculativeStats, TokenChunk,
)
from .types import ChatDelta, ChatResult, CompletionResult, Message, SessionInfo, Usage

__version__ = "0.1.0"

__all__ = [
    # HTTP
    "Client", "AsyncClient", "ChatSession", "AsyncChatSession",
    "Message", "Usage", "ChatResult", "ChatDelta", "CompletionResult", "SessionInfo",
    # gRPC
    "RuntimeClient", "AsyncRuntimeClient", "RuntimeSession", "AsyncRuntimeSession",
    "TokenChunk", "GenerateDone", "GenerateOptions", "GenerateResult", "RuntimeSessionInfo", "SpeculativeStats",
    "Frame",
    # errors
    "KakeyaError", "InvalidRequest", "ContextLengthExceeded", "ModelNotFound", "SessionNotFound", "SessionBusy",
    "Unauthenticated", "PayloadTooLarge", "Overloaded", "TooManySessions", "Unavailable", "ServerError",
    "error_from_http", "error_from_grpc",
    "__version__",
]
