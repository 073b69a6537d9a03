"""Request validation: every rejection is a typed error naming the offending field."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import ContextLengthExceeded, InvalidRequest
from ..types import SamplingParams, SpeculativeParams


@dataclass(frozen=True, slots=True)
class Limits:
    """What a request is validated against: the edges get this value, never the core itself."""

    vocab_size: int
    max_context: int
    max_draft_tokens: int
    methods: tuple[str, ...]  # speculative methods this engine serves
    default_spec: SpeculativeParams
    default_max_tokens: Optional[int] = None  # a request naming no cap gets this (bounded by the context)
    default_temperature: float = 1.0          # a request naming no temperature gets this


def check_token_ids(ids: Sequence[int], vocab_size: int, param: str) -> None:
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequest(f"{param} token id {bad} is outside the vocabulary [0, {vocab_size})", param)


def validate(prompt_ids: Sequence[int], sp: SamplingParams, spec: SpeculativeParams,
             kv_window: Optional[Sequence[int]], limits: Limits) -> None:
    if len(prompt_ids) == 0:
        raise InvalidRequest("prompt is empty: at least one prompt token is required", "prompt")
    least = 0 if sp.prompt_logprobs is not None else 1  # 0: score the prompt only (eval harnesses)
    if sp.max_tokens < least:
        raise InvalidRequest(f"max_tokens must be at least {least}, got {sp.max_tokens}", "max_tokens")
    check_token_ids(prompt_ids, limits.vocab_size, "prompt")
    total = len(prompt_ids) + sp.max_tokens
    if total > limits.max_context:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limits.max_context} tokens. However, you requested "
            f"{total} tokens ({len(prompt_ids)} in the prompt, {sp.max_tokens} for the completion). "
            "Please reduce the prompt or max_tokens.",
            "max_tokens",
        )
    # written as `not (in range)`, so NaN (which compares False with everything) is refused too
    if not 0.0 <= sp.temperature < math.inf:
        raise InvalidRequest(f"temperature must be a finite number >= 0, got {sp.temperature}", "temperature")
    if not 0.0 <= sp.top_p <= 1.0:
        raise InvalidRequest(f"top_p must be in [0, 1] (0 keeps only the most likely token), got {sp.top_p}", "top_p")
    if sp.top_k < 0:
        raise InvalidRequest(f"top_k must be >= 0 (0 disables it), got {sp.top_k}", "top_k")
    if not 0.0 <= sp.min_p <= 1.0:
        raise InvalidRequest(f"min_p must be in [0, 1], got {sp.min_p}", "min_p")
    if sp.logprobs is not None and not 0 <= sp.logprobs <= 20:
        raise InvalidRequest(f"top_logprobs must be in [0, 20], got {sp.logprobs}", "top_logprobs")
    if sp.prompt_logprobs is not None and not 0 <= sp.prompt_logprobs <= 20:
        raise InvalidRequest(f"prompt logprobs must be in [0, 20], got {sp.prompt_logprobs}", "logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if not -2.0 <= getattr(sp, name) <= 2.0:
            raise InvalidRequest(f"{name} must be in [-2, 2], got {getattr(sp, name)}", name)
    bad_bias = next((t for t, _ in sp.logit_bias if not 0 <= t < limits.vocab_size), None)
    if bad_bias is not None:
        raise InvalidRequest(f"logit_bias token id {bad_bias} is outside the vocabulary [0, {limits.vocab_size})", "logit_bias")
    bad_bias = next(((t, b) for t, b in sp.logit_bias if not -100.0 <= b <= 100.0), None)
    if bad_bias is not None:
        raise InvalidRequest(f"logit_bias for token {bad_bias[0]} must be in [-100, 100], got {bad_bias[1]}", "logit_bias")
    if kv_window is not None:
        check_kv_window(kv_window, limits.max_context)
    if spec.method not in limits.methods:
        known = ", ".join(limits.methods)
        raise InvalidRequest(f"unknown speculative method {spec.method!r}; expected one of: {known}", "speculative.method")
    if not 0 <= spec.num_draft_tokens <= limits.max_draft_tokens:
        raise InvalidRequest(
            f"num_draft_tokens must be in [0, {limits.max_draft_tokens}], got {spec.num_draft_tokens}",
            "speculative.num_draft_tokens",
        )


def check_kv_window(w: Sequence[int], max_context: int, param: str = "kv_window") -> None:
    """(sink, window): window 0 means the full cache; otherwise window >= 1 and sink >= 0."""
    if len(w) != 2 or not all(isinstance(x, int) for x in w):
        raise InvalidRequest(f"{param} must be two integers (sink, window), got {w!r}", param)
    sink, window = w
    if not (0 <= sink <= max_context and 0 <= window <= max_context):
        raise InvalidRequest(f"{param} sink and window must be in [0, {max_context}] (window 0: the full cache), "
                             f"got sink={sink}, window={window}", param)
