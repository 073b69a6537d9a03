"""Asynchronous HTTP client: the same API as `Client`, with `await` and `async for`."""
from __future__ import annotations

import uuid
from typing import Any, AsyncIterator, Mapping, Optional, Sequence, Union

import httpx

from . import _http_common as common
from ._http_common import MessageLike, Speculative
from .errors import SessionNotFound
from .types import ChatDelta, ChatResult, CompletionResult, SessionInfo

__all__ = ["AsyncClient", "AsyncChatSession"]


class AsyncClient:
    """Talks to one Kakeya server over HTTP from asyncio. Use `async with`, or `await close()`.

    Errors are the same typed `KakeyaError`s as `Client` raises.
    """

    def __init__(self, base_url: str = common.DEFAULT_BASE_URL, api_key: Optional[str] = None,
                 timeout: Union[float, httpx.Timeout, None] = common.DEFAULT_TIMEOUT,
                 headers: Optional[Mapping[str, str]] = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=common.headers(api_key, headers),
                                       timeout=timeout)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, body: Optional[dict[str, Any]] = None) -> Any:
        try:
            r = await self._http.request(method, path, json=body)
        except httpx.ConnectError as e:
            raise common.unavailable(e, self.base_url) from e
        return common.check(r)

    # -- generation -----------------------------------------------------------

    async def chat(self, messages: Sequence[MessageLike], *, model: Optional[str] = None,
                   max_tokens: Optional[int] = None, temperature: Optional[float] = None,
                   top_p: Optional[float] = None, top_k: Optional[int] = None, seed: Optional[int] = None,
                   stop: Union[str, Sequence[str], None] = None, session_id: Optional[str] = None,
                   speculative: Speculative = None, **extra: Any) -> ChatResult:
        """POST /v1/chat/completions; see `Client.chat`."""
        fields = common.sampling_fields(model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                        top_k=top_k, seed=seed, stop=stop, session_id=session_id,
                                        speculative=speculative, **extra)
        body = common.chat_body(messages, False, fields)
        return ChatResult.from_dict(await self._request("POST", "/v1/chat/completions", body))

    async def chat_stream(self, messages: Sequence[MessageLike], *, model: Optional[str] = None,
                          max_tokens: Optional[int] = None, temperature: Optional[float] = None,
                          top_p: Optional[float] = None, top_k: Optional[int] = None, seed: Optional[int] = None,
                          stop: Union[str, Sequence[str], None] = None, session_id: Optional[str] = None,
                          speculative: Speculative = None, **extra: Any) -> AsyncIterator[ChatDelta]:
        """Stream a chat completion; the last delta carries `usage`. To stop early and free the
        server at once, wrap it in `contextlib.aclosing(...)` (an abandoned async generator is
        only closed when the event loop finalizes it)."""
        fields = common.sampling_fields(model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                        top_k=top_k, seed=seed, stop=stop, session_id=session_id,
                                        speculative=speculative, **extra)
        body = common.chat_body(messages, True, fields)
        try:
            async with self._http.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise common.error_from_response(r)
                parser = common.ChatStreamParser()
                async for line in r.aiter_lines():
                    delta = parser.feed(line)
                    if parser.done:
                        return
                    if delta is not None:
                        yield delta
                delta = parser.end()
                if delta is not None:
                    yield delta
        except httpx.ConnectError as e:
            raise common.unavailable(e, self.base_url) from e

    async def complete(self, prompt: Union[str, Sequence[int]], *, model: Optional[str] = None,
                       max_tokens: Optional[int] = None, temperature: Optional[float] = None,
                       top_p: Optional[float] = None, top_k: Optional[int] = None, seed: Optional[int] = None,
                       stop: Union[str, Sequence[str], None] = None, session_id: Optional[str] = None,
                       speculative: Speculative = None, return_token_ids: bool = False,
                       **extra: Any) -> CompletionResult:
        """POST /v1/completions; see `Client.complete`."""
        fields = common.sampling_fields(model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                        top_k=top_k, seed=seed, stop=stop, session_id=session_id,
                                        speculative=speculative, **extra)
        body = common.completion_body(prompt, return_token_ids, fields)
        return CompletionResult.from_dict(await self._request("POST", "/v1/completions", body))

    # -- server ---------------------------------------------------------------

    async def models(self) -> list[str]:
        return [m["id"] for m in (await self._request("GET", "/v1/models"))["data"]]

    async def health(self) -> bool:
        """True when the server is up and its model loaded; never raises for a down server."""
        try:
            return (await self._http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    # -- sessions ---------------------------------------------------------------

    async def get_session(self, session_id: str) -> SessionInfo:
        return SessionInfo.from_dict(await self._request("GET", f"/v1/sessions/{session_id}"))

    async def delete_session(self, session_id: str) -> None:
        await self._request("DELETE", f"/v1/sessions/{session_id}")

    def session(self, session_id: Optional[str] = None, *, system: Optional[str] = None) -> "AsyncChatSession":
        """A multi-turn conversation whose KV cache stays on the server; use `async with`."""
        return AsyncChatSession(self, session_id or f"sdk-{uuid.uuid4().hex}", system)


class AsyncChatSession:
    """The async twin of `ChatSession`: keeps the messages, sends `session_id`, deletes on exit."""

    def __init__(self, client: AsyncClient, session_id: str, system: Optional[str] = None) -> None:
        self.client, self.session_id = client, session_id
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []

    async def __aenter__(self) -> "AsyncChatSession":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, user_text: str, **kw: Any) -> ChatResult:
        """One turn; a failed turn leaves the history unchanged."""
        self.messages.append({"role": "user", "content": user_text})
        try:
            result = await self.client.chat(self.messages, session_id=self.session_id, **kw)
        except BaseException:
            self.messages.pop()
            raise
        self.messages.append({"role": "assistant", "content": result.content or ""})
        return result

    async def info(self) -> SessionInfo:
        return await self.client.get_session(self.session_id)

    async def close(self) -> None:
        try:
            await self.client.delete_session(self.session_id)
        except SessionNotFound:
            pass
