"""The Proposer protocol: how the engine asks for drafts and tells a proposer what happened.

A proposer sees each request through a RequestView (its id and full token history) and
returns one Draft per request. Deterministic drafters (n-gram, suffix) return a point mass
(`probs=None`); model drafters return their distribution so rejection sampling stays exact.
A one-forward block drafter (masked diffusion) fits the same shape: one call, k tokens.
This package never imports the engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import torch


class RequestView(Protocol):
    request_id: str

    @property
    def token_ids(self) -> Sequence[int]:
        """Prompt + generated tokens so far (the last one is not yet in the verifier's KV)."""
        ...


@dataclass(slots=True)
class Draft:
    tokens: list[int]
    probs: Optional[torch.Tensor] = None  # [len(tokens), V] draft distribution; None = point mass
    forced: bool = False  # a grammar's forced tokens (its tokenization of fixed text), not a proposer's guess

    def truncate(self, k: int) -> "Draft":
        return Draft(self.tokens[:k], None if self.probs is None else self.probs[:k], self.forced)


EMPTY = Draft([])


class Proposer(Protocol):
    name: str

    def propose(self, requests: Sequence[RequestView], num_tokens: Sequence[int]) -> list[Draft]:
        """At most num_tokens[i] draft tokens for requests[i]."""
        ...

    def rewind(self, request_id: str, n: int) -> None:
        """The last n drafted tokens were rejected; forget any state built on them."""
        ...

    def release(self, request_id: str) -> None:
        """The request finished; free its state."""
        ...


class PlainProposer:
    """k = 0: plain decoding runs through the same verify path with empty drafts."""

    name = "none"

    def propose(self, requests: Sequence[RequestView], num_tokens: Sequence[int]) -> list[Draft]:
        return [EMPTY for _ in requests]

    def rewind(self, request_id: str, n: int) -> None:
        pass

    def release(self, request_id: str) -> None:
        pass
