"""SDK-side dataclasses of the gRPC runtime API (kakeya.v1), free of protobuf types.

Callers of `RuntimeClient` only ever see these; `_convert.py` is the one place that turns
them into protobuf messages and back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

__all__ = ["SpeculativeStats", "TokenChunk", "GenerateDone", "GenerateOptions", "GenerateResult",
           "RuntimeSessionInfo", "Frame"]


@dataclass(frozen=True)
class SpeculativeStats:
    """How speculation went: drafted vs accepted tokens, and acceptance by draft position."""

    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    recovered_tokens: int = 0
    bonus_tokens: int = 0
    plain_steps: int = 0
    verify_steps: int = 0
    accepted_per_position: tuple[int, ...] = ()

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0


@dataclass(frozen=True)
class TokenChunk:
    """Newly generated tokens and the text they complete (never half a UTF-8 character, so a
    chunk may carry ids with empty text, or text with no ids at the very end)."""

    token_ids: tuple[int, ...]
    text: str


@dataclass(frozen=True)
class GenerateDone:
    """The last frame of a generate: why it stopped and what it cost. `cached_tokens` of
    `prompt_tokens` came from the session's KV cache."""

    stop_reason: str  # "stop" (eos / stop token) | "length" (max_tokens or context)
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    history_length: int
    time_to_first_token_s: float
    total_s: float
    speculative: SpeculativeStats = field(default_factory=SpeculativeStats)


Frame = Union[TokenChunk, GenerateDone]


@dataclass(frozen=True)
class GenerateOptions:
    """Sampling and speculation for one generate. None leaves the server default
    (temperature None = greedy, top_p None = 1, top_k None = off)."""

    max_tokens: int
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    seed: Optional[int] = None
    speculative_method: Optional[str] = None  # auto | none | ngram | suffix | draft
    num_draft_tokens: Optional[int] = None


@dataclass
class GenerateResult:
    """A generate collected whole: all token ids, the full text, and the done frame."""

    token_ids: list[int]
    text: str
    done: GenerateDone


@dataclass(frozen=True)
class RuntimeSessionInfo:
    """A runtime session: history length, live KV (tokens and bytes), idleness, busy flag."""

    session_id: str
    label: str
    history_length: int
    kv_cached_tokens: int
    kv_bytes: int
    idle_seconds: float
    busy: bool
    speculative: SpeculativeStats = field(default_factory=SpeculativeStats)


class ResultBuilder:
    """Accumulates frames into a GenerateResult (shared by the sync and async clients)."""

    def __init__(self) -> None:
        self.token_ids: list[int] = []
        self.text: list[str] = []
        self.done: Optional[GenerateDone] = None

    def add(self, frame: Frame) -> None:
        if isinstance(frame, GenerateDone):
            self.done = frame
        else:
            self.token_ids.extend(frame.token_ids)
            self.text.append(frame.text)

    def result(self) -> GenerateResult:
        if self.done is None:  # the server always ends with done; anything else is a broken stream
            from .errors import KakeyaError
            raise KakeyaError("the generate stream ended without its done frame")
        return GenerateResult(self.token_ids, "".join(self.text), self.done)
