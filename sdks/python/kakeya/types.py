"""Result dataclasses of the HTTP API, each parsed from its JSON in one `from_dict`.

Callers get attributes with types instead of nested dicts; `raw` keeps the whole server
object for fields this SDK does not lift out (logprobs, extra choices, future extensions).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["Message", "Usage", "ChatResult", "ChatDelta", "CompletionResult", "SessionInfo"]


@dataclass
class Message:
    """One chat message; `to_dict()` gives the OpenAI wire form (None fields left out)."""

    role: str
    content: Optional[str] = None
    name: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None
    tool_call_id: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass
class Usage:
    """Token accounting. `cached_tokens` counts prompt tokens whose KV the server reused
    (session or prefix cache) — the number that shows a session is paying off."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    speculative: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Optional[dict[str, Any]]) -> Optional["Usage"]:
        if not d:
            return None
        details = d.get("prompt_tokens_details") or {}
        prompt, completion = int(d.get("prompt_tokens", 0)), int(d.get("completion_tokens", 0))
        return cls(prompt, completion, int(d.get("total_tokens", prompt + completion)),
                   int(details.get("cached_tokens") or 0), dict(d.get("speculative") or {}))


@dataclass
class ChatResult:
    """A whole chat completion (first choice lifted out; the rest stay in `raw`)."""

    id: str
    model: str
    content: Optional[str]
    reasoning_content: Optional[str]
    tool_calls: list[dict[str, Any]]
    finish_reason: Optional[str]
    usage: Optional[Usage]
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ChatResult":
        choice = (d.get("choices") or [{}])[0]
        msg = choice.get("message") or {}
        return cls(d.get("id", ""), d.get("model", ""), msg.get("content"), msg.get("reasoning_content"),
                   list(msg.get("tool_calls") or []), choice.get("finish_reason"), Usage.from_dict(d.get("usage")), d)


@dataclass
class ChatDelta:
    """One streamed chat chunk. Text fields are "" when absent so deltas concatenate directly;
    `usage` is set only on the last item (the server's include_usage chunk)."""

    content: str = ""
    reasoning_content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: Optional[str] = None
    usage: Optional[Usage] = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ChatDelta":
        choices = d.get("choices") or []
        choice = choices[0] if choices else {}
        delta = choice.get("delta") or {}
        return cls(delta.get("content") or "", delta.get("reasoning_content") or "",
                   list(delta.get("tool_calls") or []), choice.get("finish_reason"), Usage.from_dict(d.get("usage")), d)


@dataclass
class CompletionResult:
    """A whole text completion. `token_ids` is set only when asked for (`return_token_ids=True`)."""

    id: str
    model: str
    text: str
    token_ids: Optional[list[int]]
    finish_reason: Optional[str]
    usage: Optional[Usage]
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompletionResult":
        choice = (d.get("choices") or [{}])[0]
        ids = choice.get("token_ids")
        return cls(d.get("id", ""), d.get("model", ""), choice.get("text") or "",
                   None if ids is None else [int(t) for t in ids], choice.get("finish_reason"),
                   Usage.from_dict(d.get("usage")), d)


@dataclass
class SessionInfo:
    """A server-side HTTP session: how much history it holds and how much of it has live KV."""

    id: str
    history_length: int
    kv_cached_tokens: int
    kv_bytes: int
    idle_seconds: float
    busy: bool
    speculative: dict[str, Any]
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SessionInfo":
        return cls(d["id"], int(d["history_length"]), int(d["kv_cached_tokens"]), int(d["kv_bytes"]),
                   float(d["idle_seconds"]), bool(d["busy"]), dict(d.get("speculative") or {}), d)
