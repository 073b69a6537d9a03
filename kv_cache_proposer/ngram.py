"""Prompt lookup (n-gram) drafting over a request's own history.

The last n tokens are searched for earlier in prompt + output; the tokens that followed the
most recent earlier occurrence are the draft. Longer n-grams are tried first because their
continuations are more often right. Stateless, so rewind/release have nothing to do.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .base import EMPTY, Draft, RequestView


def lookup(history: Sequence[int], k: int, max_n: int = 4, min_n: int = 2) -> list[int]:
    """Up to k tokens that followed the latest earlier match of history's last n tokens."""
    length = len(history)
    if k <= 0 or length < 2:
        return []
    h = torch.tensor(history, dtype=torch.long)  # [L]
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        windows = h[: length - 1].unfold(0, n, 1)  # [L-n, n]: windows that have a next token
        hits = (windows == h[length - n :]).all(-1).nonzero().flatten()
        if hits.numel():
            start = int(hits[-1]) + n
            return h[start : start + k].tolist()
    return []


class NgramProposer:
    name = "ngram"

    def __init__(self, max_n: int = 4, min_n: int = 2):
        self.max_n, self.min_n = max_n, min_n

    def propose(self, requests: Sequence[RequestView], num_tokens: Sequence[int]) -> list[Draft]:
        out = []
        for req, k in zip(requests, num_tokens):
            tokens = lookup(req.token_ids, k, self.max_n, self.min_n)
            out.append(Draft(tokens) if tokens else EMPTY)
        return out

    def rewind(self, request_id: str, n: int) -> None:
        pass

    def release(self, request_id: str) -> None:
        pass
