"""Synchronous gRPC client for the kakeya.v1 RuntimeService: token-level sessions whose KV
cache stays on the server, so each turn prefills only what was appended."""
from __future__ import annotations

import time
from typing import Any, Iterator, Optional, Sequence

import grpc

from . import _convert as cv
from ._pb.kakeya.v1 import runtime_pb2_grpc
from .errors import SessionBusy, SessionNotFound, error_from_grpc
from .runtime_types import Frame, GenerateOptions, GenerateResult, ResultBuilder, RuntimeSessionInfo

__all__ = ["RuntimeClient", "RuntimeSession"]

DEFAULT_TARGET = "127.0.0.1:50051"


class RuntimeClient:
    """One channel to a Kakeya gRPC runtime. Use as a context manager, or call `close()`.

    Every failed RPC raises its typed `KakeyaError` (NOT_FOUND → SessionNotFound, ...).
    `timeout` bounds unary calls only; a generate streams for as long as it needs.
    """

    def __init__(self, target: str = DEFAULT_TARGET, api_key: Optional[str] = None, *,
                 timeout: Optional[float] = None, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.target = target
        self._channel = grpc.insecure_channel(target, options=list(options))
        self._stub = runtime_pb2_grpc.RuntimeServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._timeout = timeout

    def __enter__(self) -> "RuntimeClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _unary(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as e:
            raise error_from_grpc(e, method) from e

    # -- sessions ---------------------------------------------------------------

    def create_session(self, eos_token_ids: Sequence[int] = (), label: str = "",
                       kv_window: Optional[tuple[int, int]] = None) -> "RuntimeSession":
        """A new empty session. `eos_token_ids` stop generation in addition to the model's own;
        `kv_window` (sink, window) bounds its KV (window 0: full; None: the server's --kv-window)."""
        resp = self._unary("CreateSession", cv.create_session_to_pb(eos_token_ids, label, kv_window))
        return RuntimeSession(self, cv.session_id_from_pb(resp))

    def session_info(self, session_id: str) -> RuntimeSessionInfo:
        return cv.info_from_pb(self._unary("GetSessionInfo", cv.info_request_to_pb(session_id)))

    def close_session(self, session_id: str) -> None:
        self._unary("CloseSession", cv.close_to_pb(session_id))

    def append(self, session_id: str, token_ids: Sequence[int]) -> int:
        """Add tokens to the session's history; returns the new history length. A bad id
        (outside the vocabulary) raises InvalidRequest and leaves the history unchanged."""
        return cv.history_length_from_pb(self._unary("AppendTokens", cv.append_to_pb(session_id, token_ids)))

    # -- generation -------------------------------------------------------------

    def generate(self, session_id: str, max_tokens: int, *, temperature: Optional[float] = None,
                 top_p: Optional[float] = None, top_k: Optional[int] = None, seed: Optional[int] = None,
                 speculative_method: Optional[str] = None,
                 num_draft_tokens: Optional[int] = None) -> Iterator[Frame]:
        """Continue the session's history: TokenChunks, then one GenerateDone. The new tokens
        join the history. The RPC starts on the first `next()`; leaving the loop early (or
        `close()` on the iterator) cancels it, and the server keeps what was generated."""
        opts = GenerateOptions(max_tokens, temperature, top_p, top_k, seed, speculative_method, num_draft_tokens)
        return self._stream(cv.generate_to_pb(session_id, opts))

    def _stream(self, request: Any) -> Iterator[Frame]:
        call = self._stub.Generate(request, metadata=self._metadata)
        try:
            for response in call:
                yield cv.frame_from_pb(response)
        except grpc.RpcError as e:
            raise error_from_grpc(e, "Generate") from e
        finally:
            call.cancel()  # no-op after a finished stream; aborts the engine request otherwise

    def generate_all(self, session_id: str, max_tokens: int, **kw: Any) -> GenerateResult:
        """`generate` collected whole."""
        builder = ResultBuilder()
        for frame in self.generate(session_id, max_tokens, **kw):
            builder.add(frame)
        return builder.result()


class RuntimeSession:
    """A server session bound to its client. As a context manager it closes the server session
    on exit (a session already gone is fine)."""

    def __init__(self, client: RuntimeClient, session_id: str) -> None:
        self.client, self.session_id = client, session_id

    def __enter__(self) -> "RuntimeSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, token_ids: Sequence[int]) -> int:
        return self.client.append(self.session_id, token_ids)

    def generate(self, max_tokens: int, **kw: Any) -> Iterator[Frame]:
        return self.client.generate(self.session_id, max_tokens, **kw)

    def generate_all(self, max_tokens: int, **kw: Any) -> GenerateResult:
        return self.client.generate_all(self.session_id, max_tokens, **kw)

    def info(self) -> RuntimeSessionInfo:
        return self.client.session_info(self.session_id)

    def close(self, busy_wait_s: float = 5.0) -> None:
        """Close the server session. A generate cancelled just before lets go of the session
        within an engine step, so SessionBusy is retried for up to `busy_wait_s` seconds."""
        deadline = time.monotonic() + busy_wait_s
        while True:
            try:
                self.client.close_session(self.session_id)
                return
            except SessionNotFound:
                return
            except SessionBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)
