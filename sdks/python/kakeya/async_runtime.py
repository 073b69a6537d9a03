"""Asynchronous gRPC client (grpc.aio): the same API as `RuntimeClient`, with `await` and
`async for`. Create it inside the running event loop the calls will use."""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Optional, Sequence

import grpc
import grpc.aio

from . import _convert as cv
from ._pb.kakeya.v1 import runtime_pb2_grpc
from .errors import SessionBusy, SessionNotFound, error_from_grpc
from .runtime import DEFAULT_TARGET
from .runtime_types import Frame, GenerateOptions, GenerateResult, ResultBuilder, RuntimeSessionInfo

__all__ = ["AsyncRuntimeClient", "AsyncRuntimeSession"]


class AsyncRuntimeClient:
    """One grpc.aio channel to a Kakeya runtime. Use `async with`, or `await close()`."""

    def __init__(self, target: str = DEFAULT_TARGET, api_key: Optional[str] = None, *,
                 timeout: Optional[float] = None, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.target = target
        self._channel = grpc.aio.insecure_channel(target, options=list(options))
        self._stub = runtime_pb2_grpc.RuntimeServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._timeout = timeout

    async def __aenter__(self) -> "AsyncRuntimeClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, method)(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as e:  # grpc.aio.AioRpcError is one
            raise error_from_grpc(e, method) from e

    # -- sessions ---------------------------------------------------------------

    async def create_session(self, eos_token_ids: Sequence[int] = (), label: str = "",
                             kv_window: Optional[tuple[int, int]] = None) -> "AsyncRuntimeSession":
        resp = await self._unary("CreateSession", cv.create_session_to_pb(eos_token_ids, label, kv_window))
        return AsyncRuntimeSession(self, cv.session_id_from_pb(resp))

    async def session_info(self, session_id: str) -> RuntimeSessionInfo:
        return cv.info_from_pb(await self._unary("GetSessionInfo", cv.info_request_to_pb(session_id)))

    async def close_session(self, session_id: str) -> None:
        await self._unary("CloseSession", cv.close_to_pb(session_id))

    async def append(self, session_id: str, token_ids: Sequence[int]) -> int:
        return cv.history_length_from_pb(await self._unary("AppendTokens", cv.append_to_pb(session_id, token_ids)))

    # -- generation -------------------------------------------------------------

    def generate(self, session_id: str, max_tokens: int, *, temperature: Optional[float] = None,
                 top_p: Optional[float] = None, top_k: Optional[int] = None, seed: Optional[int] = None,
                 speculative_method: Optional[str] = None,
                 num_draft_tokens: Optional[int] = None) -> AsyncIterator[Frame]:
        """See `RuntimeClient.generate`. To cancel promptly when stopping early, wrap it in
        `contextlib.aclosing(...)`; an abandoned async generator is closed only when finalized."""
        opts = GenerateOptions(max_tokens, temperature, top_p, top_k, seed, speculative_method, num_draft_tokens)
        return self._stream(cv.generate_to_pb(session_id, opts))

    async def _stream(self, request: Any) -> AsyncIterator[Frame]:
        call = self._stub.Generate(request, metadata=self._metadata)
        try:
            async for response in call:
                yield cv.frame_from_pb(response)
        except grpc.RpcError as e:
            raise error_from_grpc(e, "Generate") from e
        finally:
            call.cancel()  # no-op after a finished stream; aborts the engine request otherwise

    async def generate_all(self, session_id: str, max_tokens: int, **kw: Any) -> GenerateResult:
        builder = ResultBuilder()
        async for frame in self.generate(session_id, max_tokens, **kw):
            builder.add(frame)
        return builder.result()


class AsyncRuntimeSession:
    """The async twin of `RuntimeSession`; `async with` closes the server session on exit."""

    def __init__(self, client: AsyncRuntimeClient, session_id: str) -> None:
        self.client, self.session_id = client, session_id

    async def __aenter__(self) -> "AsyncRuntimeSession":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def append(self, token_ids: Sequence[int]) -> int:
        return await self.client.append(self.session_id, token_ids)

    def generate(self, max_tokens: int, **kw: Any) -> AsyncIterator[Frame]:
        return self.client.generate(self.session_id, max_tokens, **kw)

    async def generate_all(self, max_tokens: int, **kw: Any) -> GenerateResult:
        return await self.client.generate_all(self.session_id, max_tokens, **kw)

    async def info(self) -> RuntimeSessionInfo:
        return await self.client.session_info(self.session_id)

    async def close(self, busy_wait_s: float = 5.0) -> None:
        """Close the server session, retrying SessionBusy briefly (see `RuntimeSession.close`)."""
        deadline = time.monotonic() + busy_wait_s
        while True:
            try:
                await self.client.close_session(self.session_id)
                return
            except SessionNotFound:
                return
            except SessionBusy:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.02)
