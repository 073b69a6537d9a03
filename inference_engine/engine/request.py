"""A request as the engine holds it: prompt, sampling, its KV cache and what it has produced."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..cache.kv_cache import KVCache, KVWindow
from ..cache.session_store import Session
from .grammar import Grammar
from ..types import FinishReason, SamplingParams, SpecStats, SpeculativeParams, TokenCallback, TokenLogprob


@dataclass(eq=False, slots=True)
class Request:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    spec: SpeculativeParams
    stop_ids: frozenset[int]
    on_token: Optional[TokenCallback] = None
    output_ids: list[int] = field(default_factory=list)
    cache: Optional[KVCache] = None
    generator: Optional[torch.Generator] = None
    finish_reason: Optional[FinishReason] = None
    stats: SpecStats = field(default_factory=SpecStats)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # filled when sampling.logprobs is set
    session: Optional[Session] = None  # checked out for this request, checked in when it ends
    cached_tokens: int = 0  # prompt tokens whose KV came from a session or the prefix cache
    tenant: str = ""  # whose prefix cache and suffix index this request reads and feeds
    grammar: Optional[Grammar] = None  # where its output stands in sampling.grammar (engine/grammar.py)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)  # with sampling.prompt_logprobs
    arrived_at: float = 0.0      # time.monotonic() when queued, first scheduled, first token out
    scheduled_at: float = 0.0
    first_token_at: float = 0.0
    kv_window: Optional[KVWindow] = None  # sink + window KV (cache/kv_cache.py); None: the full cache

    @property
    def headroom(self) -> int:
        """The widest forward a step of this request makes once decoding: k drafts + 1."""
        return (0 if self.spec.method == "none" else self.spec.num_draft_tokens) + 1

    @property
    def token_ids(self) -> list[int]:
        """Prompt + output; the KV cache covers all of them except the newest token."""
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def remaining(self) -> int:
        return self.sampling.max_tokens - len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
