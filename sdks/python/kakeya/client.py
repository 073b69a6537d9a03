"""Synchronous HTTP client for Kakeya's OpenAI-compatible API and its session extension."""
from __future__ import annotations

import uuid
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import httpx

from . import _http_common as common
from ._http_common import MessageLike, Speculative
from .errors import SessionNotFound
from .types import ChatDelta, ChatResult, CompletionResult, SessionInfo

__all__ = ["Client", "ChatSession"]


class Client:
    """Talks to one Kakeya server over HTTP. Use as a context manager, or call `close()`.

    Every non-2xx response raises its typed `KakeyaError`; a refused connection raises
    `Unavailable`. Other transport failures (timeouts) surface as httpx exceptions.
    """

    def __init__(self, base_url: str = common.DEFAULT_BASE_URL, api_key: Optional[str] = None,
                 timeout: Union[float, httpx.Timeout, None] = common.DEFAULT_TIMEOUT,
                 headers: Optional[Mapping[str, str]] = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=common.headers(api_key, headers), timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, body: Optional[dict[str, Any]] = None) -> Any:
        try:
            r = self._http.request(method, path, json=body)
        except httpx.ConnectError as e:
            raise common.unavailable(e, self.base_url) from e
        return common.check(r)

    # -- generation -----------------------------------------------------------

    def chat(self, messages: Sequence[MessageLike], *, model: Optional[str] = None, max_tokens: Optional[int] = None,
             temperature: Optional[float] = None, top_p: Optional[float] = None, top_k: Optional[int] = None,
             seed: Optional[int] = None, stop: Union[str, Sequence[str], None] = None,
             session_id: Optional[str] = None, speculative: Speculative = None, **extra: Any) -> ChatResult:
        """POST /v1/chat/completions. `extra` passes any other request field through verbatim
        (e.g. `tools=[...]`, `max_completion_tokens=...`, `ignore_eos=True`)."""
        fields = common.sampling_fields(model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                        top_k=top_k, seed=seed, stop=stop, session_id=session_id,
                                        speculative=speculative, **extra)
        body = common.chat_body(messages, False, fields)
        return ChatResult.from_dict(self._request("POST", "/v1/chat/completions", body))

    def chat_stream(self, messages: Sequence[MessageLike], *, model: Optional[str] = None,
                    max_tokens: Optional[int] = None, temperature: Optional[float] = None,
                    top_p: Optional[float] = None, top_k: Optional[int] = None, seed: Optional[int] = None,
                    stop: Union[str, Sequence[str], None] = None, session_id: Optional[str] = None,
                    speculative: Speculative = None, **extra: Any) -> Iterator[ChatDelta]:
        """Stream a chat completion as deltas; the last one carries `usage`.

        The request is sent on the first `next()`. Leaving the loop early closes the
        connection, which makes the server abort the generation (and free the session)."""
        fields = common.sampling_fields(model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                        top_k=top_k, seed=seed, stop=stop, session_id=session_id,
                                        speculative=speculative, **extra)
        body = common.chat_body(messages, True, fields)
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    raise common.error_from_response(r)
                parser = common.ChatStreamParser()
                for line in r.iter_lines():
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

    def complete(self, prompt: Union[str, Sequence[int]], *, model: Optional[str] = None,
                 max_tokens: Optional[int] = None, temperature: Optional[float] = None, top_p: Optional[float] = None,
                 top_k: Optional[int] = None, seed: Optional[int] = None, stop: Union[str, Sequence[str], None] = None,
                 session_id: Optional[str] = None, speculative: Speculative = None, return_token_ids: bool = False,
                 **extra: Any) -> CompletionResult:
        """POST /v1/completions with a text prompt or token ids. `return_token_ids=True` (a server
        extension) fills `CompletionResult.token_ids` with the generated ids."""
        fields = common.sampling_fields(model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                        top_k=top_k, seed=seed, stop=stop, session_id=session_id,
                                        speculative=speculative, **extra)
        body = common.completion_body(prompt, return_token_ids, fields)
        return CompletionResult.from_dict(self._request("POST", "/v1/completions", body))

    # -- server ---------------------------------------------------------------

    def models(self) -> list[str]:
        """The ids of the served models (one, for a Kakeya server)."""
        return [m["id"] for m in self._request("GET", "/v1/models")["data"]]

    def health(self) -> bool:
        """True when the server is up and its model loaded; never raises for a down server."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    # -- sessions ---------------------------------------------------------------

    def get_session(self, session_id: str) -> SessionInfo:
        return SessionInfo.from_dict(self._request("GET", f"/v1/sessions/{session_id}"))

    def delete_session(self, session_id: str) -> None:
        """Forget a session and free its KV cache. Raises SessionNotFound if it is gone already."""
        self._request("DELETE", f"/v1/sessions/{session_id}")

    def session(self, session_id: Optional[str] = None, *, system: Optional[str] = None) -> "ChatSession":
        """A multi-turn conversation whose KV cache stays on the server between turns."""
        return ChatSession(self, session_id or f"sdk-{uuid.uuid4().hex}", system)


class ChatSession:
    """Keeps the message list and sends `session_id` every turn, so each turn prefills only
    the new tokens. Deletes the server session on exit (or `close()`)."""

    def __init__(self, client: Client, session_id: str, system: Optional[str] = None) -> None:
        self.client, self.session_id = client, session_id
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []

    def __enter__(self) -> "ChatSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, user_text: str, **kw: Any) -> ChatResult:
        """One turn: appends the user message and, on success, the assistant reply. A failed turn
        leaves the history as it was, so it can simply be retried."""
        self.messages.append({"role": "user", "content": user_text})
        try:
            result = self.client.chat(self.messages, session_id=self.session_id, **kw)
        except BaseException:
            self.messages.pop()
            raise
        self.messages.append({"role": "assistant", "content": result.content or ""})
        return result

    def info(self) -> SessionInfo:
        return self.client.get_session(self.session_id)

    def close(self) -> None:
        try:
            self.client.delete_session(self.session_id)
        except SessionNotFound:  # never sent a turn, or expired: nothing to free
            pass
