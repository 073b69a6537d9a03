"""What the sync and async HTTP clients share: request bodies, error checks, SSE decoding.

Both clients only do I/O; everything that decides what goes on the wire or what comes back
lives here once, so the two cannot drift apart.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import httpx

from .errors import KakeyaError, Unavailable, error_from_http
from .types import ChatDelta, Message

MessageLike = Union[Message, Mapping[str, Any]]
Speculative = Union[str, Mapping[str, Any], None]  # "ngram" or {"method": "ngram", "num_draft_tokens": 4}

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 600.0  # generation can take minutes on CPU; httpx's 5 s default would cut it off


def headers(api_key: Optional[str], extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    out = {"User-Agent": "kakeya-sdk-python"}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    out.update(extra or {})
    return out


def message_dict(m: MessageLike) -> dict[str, Any]:
    return m.to_dict() if isinstance(m, Message) else dict(m)


def sampling_fields(*, model: Optional[str] = None, max_tokens: Optional[int] = None,
                    temperature: Optional[float] = None, top_p: Optional[float] = None, top_k: Optional[int] = None,
                    seed: Optional[int] = None, stop: Union[str, Sequence[str], None] = None,
                    session_id: Optional[str] = None, speculative: Speculative = None,
                    **extra: Any) -> dict[str, Any]:
    """The request fields common to chat and completions. None means "server default" and is
    left out, so the server (not this SDK) owns every default."""
    spec: Optional[dict[str, Any]] = None
    if isinstance(speculative, str):
        spec = {"method": speculative}
    elif speculative is not None:
        spec = dict(speculative)
    fields: dict[str, Any] = {
        "model": model, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k,
        "seed": seed, "stop": stop if isinstance(stop, (str, type(None))) else list(stop),
        "session_id": session_id, "speculative": spec,
    }
    fields.update(extra)
    return {k: v for k, v in fields.items() if v is not None}


def chat_body(messages: Sequence[MessageLike], stream: bool, fields: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [message_dict(m) for m in messages], **fields}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # so the last delta carries usage
    return body


def completion_body(prompt: Union[str, Sequence[int]], return_token_ids: bool,
                    fields: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt if isinstance(prompt, str) else [int(t) for t in prompt], **fields}
    if return_token_ids:
        body["return_token_ids"] = True
    return body


def error_from_response(r: httpx.Response) -> KakeyaError:
    """The typed error for a non-2xx response whose body has been read."""
    try:
        body: Any = r.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = r.text
    return error_from_http(r.status_code, body, r.headers)


def check(r: httpx.Response) -> Any:
    """The JSON of a read response, or its typed error."""
    if r.status_code >= 400:
        raise error_from_response(r)
    return r.json()


def unavailable(e: httpx.ConnectError, base_url: str) -> Unavailable:
    """A refused connection is reported like gRPC's UNAVAILABLE: the server is not there (yet)."""
    return Unavailable(f"cannot connect to {base_url}: {e}", code="connect_error")


@dataclass
class SSEEvent:
    event: str
    data: str


class SSEDecoder:
    """Line-by-line text/event-stream decoder (just what the server sends: event, data, comments).

    `feed` returns an event when a blank line completes one. Lines starting with ":" are the
    server's keep-alive pings during a long prefill and are dropped.
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> Optional[SSEEvent]:
        line = line.rstrip("\r\n")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None  # id:, retry: and unknown fields carry nothing we use

    def flush(self) -> Optional[SSEEvent]:
        if not self._data and not self._event:
            return None
        ev = SSEEvent(self._event or "message", "\n".join(self._data))
        self._event, self._data = "", []
        return ev


class ChatStreamParser:
    """SSE lines in, ChatDeltas out; `done` turns True at `data: [DONE]`.

    An `error` event raises its typed error. That error has no HTTP status of its own (the
    200 headers were already sent), so its `status` is None and its class comes from the
    envelope's code."""

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self.done = False

    def feed(self, line: str) -> Optional[ChatDelta]:
        ev = self._sse.feed(line)
        return self._handle(ev) if ev is not None else None

    def end(self) -> Optional[ChatDelta]:
        """Call when the body ends: an event without its closing blank line still counts."""
        ev = self._sse.flush()
        return self._handle(ev) if ev is not None and not self.done else None

    def _handle(self, ev: SSEEvent) -> Optional[ChatDelta]:
        if ev.event == "error":
            try:
                body: Any = json.loads(ev.data)
            except json.JSONDecodeError:
                body = ev.data
            raise error_from_http(None, body)
        if ev.data == "[DONE]":
            self.done = True
            return None
        return ChatDelta.from_dict(json.loads(ev.data)) if ev.data else None
