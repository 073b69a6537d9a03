"""Core value types: what a request asks for and what the engine gives back."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Optional, Sequence


class FinishReason(str, Enum):
    STOP = "stop"      # an eos/stop token, or the caller asked to stop
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"    # cancelled before it finished: client gone, server shutting down (vLLM's name)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """temperature == 0 means greedy. top_k == 0 and top_p == 1 and min_p == 0 disable those filters."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: Optional[int] = None
    stop_token_ids: tuple[int, ...] = ()  # added to the model's eos ids
    ignore_eos: bool = False
    logprobs: Optional[int] = None        # None: off; n >= 0: chosen token's logprob + n alternatives
    presence_penalty: float = 0.0         # OpenAI semantics, over generated tokens
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: Optional[str] = None  # an llguidance grammar (JSON text) the output must match; engine/grammar.py
    prompt_logprobs: Optional[int] = None  # None: off; n >= 0: each prompt token's logprob + n alternatives

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


SPEC_METHODS = ("auto", "none", "ngram", "suffix", "draft")  # the speculative methods, as every edge names them


@dataclass(frozen=True, slots=True)
class SpeculativeParams:
    """method: 'none' (plain decoding, k = 0), a proposer ('ngram', 'suffix', 'draft') with a
    fixed k = num_draft_tokens, or 'auto': the suffix proposer with k chosen per step by the
    adaptive controller, num_draft_tokens being the cap."""

    method: str = "auto"
    num_draft_tokens: int = 8


@dataclass(frozen=True, slots=True)
class Submission:
    """One request as every caller admits it (HTTP, gRPC, the cluster, the offline LLM)."""

    prompt_ids: Optional[Sequence[int]]  # None: continue the session's own history (gRPC)
    sampling: SamplingParams = SamplingParams()
    spec: Optional[SpeculativeParams] = None  # None: the server's default
    session_id: Optional[str] = None
    create_session: bool = False  # HTTP: a session named by the client is made once the request is valid
    tenant: str = ""  # owns sessions; partitions the prefix cache and the suffix index
    request_id: Optional[str] = None
    kv_window: Optional[tuple[int, int]] = None  # (sink, window) of the KV; (0, 0): full; None: the session's or server's
    session_hint: bool = False  # the session is a cache hint (prompt_cache_key): busy or full → run without it


@dataclass(slots=True)
class SpecStats:
    """Speculation accounting, in the vocabulary of vLLM: every generated token is
    exactly one of accepted (a draft the verifier agreed with), recovered (resampled
    at the first rejection), bonus (extra token after all drafts passed) or plain
    (a step that drafted nothing)."""

    drafts: int = 0           # verify steps that carried at least one draft token
    draft_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)
    recovered_tokens: int = 0
    bonus_tokens: int = 0
    plain_steps: int = 0
    verify_steps: int = 0     # forward passes of the verifier for this request

    def add(self, other: "SpecStats") -> None:
        self.drafts += other.drafts
        self.draft_tokens += other.draft_tokens
        self.accepted_tokens += other.accepted_tokens
        self.recovered_tokens += other.recovered_tokens
        self.bonus_tokens += other.bonus_tokens
        self.plain_steps += other.plain_steps
        self.verify_steps += other.verify_steps
        if len(self.accepted_per_pos) < len(other.accepted_per_pos):
            self.accepted_per_pos.extend([0] * (len(other.accepted_per_pos) - len(self.accepted_per_pos)))
        for i, n in enumerate(other.accepted_per_pos):
            self.accepted_per_pos[i] += n

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens produced per verify step (1.0 for plain decoding)."""
        total = self.accepted_tokens + self.recovered_tokens + self.bonus_tokens + self.plain_steps
        return total / self.verify_steps if self.verify_steps else 0.0


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The verifier's log-probability of a generated token (raw model distribution, as vLLM
    reports it) and the top alternatives as (token id, logprob)."""

    token_id: int
    logprob: Optional[float]  # None only for a prompt's first token, which nothing scores
    top: Optional[tuple[tuple[int, float], ...]] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# Called with each newly generated token id; returning True stops generation (finish "stop").
TokenCallback = Callable[[int], Optional[bool]]


@dataclass(frozen=True, slots=True)
class Timings:
    """Where a request's time went on the engine (seconds): waiting for a slot, prefill until its
    first token, decoding the rest (vLLM's queue / prefill / decode times)."""

    queue: float
    prefill: float
    decode: float


@dataclass(slots=True)
class EngineResult:
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    usage: Usage
    spec: SpecStats
    logprobs: Optional[list[TokenLogprob]] = None
    prompt_logprobs: Optional[list[TokenLogprob]] = None  # the first token's logprob and top are None
    timings: Optional[Timings] = None  # None when it never reached a first token


@dataclass(slots=True)
class StepStats:
    """What one EngineCore.step() did; metrics observe this, the core never imports metrics."""

    num_running: int = 0
    num_waiting: int = 0
    forwards: int = 0           # verifier model calls this step (decoding requests share one)
    spec: SpecStats = field(default_factory=SpecStats)
