"""SuffixDecoding (arXiv 2411.04975) drafting from past requests and the request's own history.

Every n-gram (min_n <= n <= max_n) of the indexed text maps to counts of the token that
followed it, which is what a suffix tree with counts, cut at depth max_n, stores. Past sequences
are held in FIFO order and evicted (their counts subtracted) once they total more than max_tokens,
so memory stays bounded.

The policy is the paper's (and ArcticInference's defaults): each index drafts on its own; a walk
matches the longest suffix of the context, follows its most frequent continuation and repeats, while
the path's probability (the product of the count shares taken) stays >= min_prob (0.1); a draft is
at most alpha × the first match's length (1.0: a two-token match drafts two; a match at the full
depth max_n may be longer than the index can tell, so it drafts up to k); its score, the sum of the
path probabilities, is the number of its tokens expected to be accepted. The request's own draft and
the past requests' draft compete on that score (a tie goes to the own one: a request repeats itself
more reliably than others do). The engine's controller still chooses k, so drafting never costs more
than it is expected to return.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Sequence

from .base import EMPTY, Draft, RequestView

Index = dict[tuple[int, ...], dict[int, int]]  # n-gram -> {next token: count}


def _update(index: Index, tokens: Sequence[int], start: int, min_n: int, max_n: int,
            delta: int) -> None:
    """Add delta to index[tokens[i-n:i]][tokens[i]] for every i >= start and n in range."""
    for n in range(min_n, max_n + 1):
        for i in range(max(start, n), len(tokens)):
            key, nxt = tuple(tokens[i - n : i]), tokens[i]
            counts = index.get(key)
            if counts is None:
                index[key] = {nxt: delta}
                continue
            c = counts.get(nxt, 0) + delta
            if c:
                counts[nxt] = c
            else:  # drop emptied entries so eviction really frees memory
                del counts[nxt]
                if not counts:
                    del index[key]


class _Live:
    """A running request's own n-gram index, extended as its history grows."""

    __slots__ = ("index", "indexed")

    def __init__(self) -> None:
        self.index: Index = {}
        self.indexed = 0  # history positions [0, indexed) are in self.index


class SuffixProposer:
    name = "suffix"

    def __init__(self, max_tokens: int = 100_000, max_n: int = 8, min_n: int = 2, min_prob: float = 0.1,
                 alpha: float = 1.0):
        if max_tokens < 0 or min_n < 1 or max_n < min_n or not 0.0 <= min_prob <= 1.0 or alpha <= 0:
            raise ValueError("need max_tokens >= 0, 1 <= min_n <= max_n, 0 <= min_prob <= 1, alpha > 0")
        self.max_tokens, self.max_n, self.min_n = max_tokens, max_n, min_n
        self.min_prob, self.alpha = min_prob, alpha
        self._index: Index = {}
        self._sequences: deque[tuple[int, ...]] = deque()  # oldest first, for eviction
        self._num_tokens = 0
        self._live: dict[str, _Live] = {}

    @property
    def num_tokens(self) -> int:
        """Tokens of past sequences currently indexed (never more than max_tokens)."""
        return self._num_tokens

    def add_sequence(self, tokens: Sequence[int]) -> None:
        """Index one finished request (prompt + output), evicting the oldest ones to fit."""
        if self.max_tokens == 0 or not tokens:
            return
        seq = tuple(tokens[-self.max_tokens :])  # the tail is what the next turn continues
        while self._sequences and self._num_tokens + len(seq) > self.max_tokens:
            old = self._sequences.popleft()
            _update(self._index, old, 0, self.min_n, self.max_n, -1)
            self._num_tokens -= len(old)
        _update(self._index, seq, 0, self.min_n, self.max_n, 1)
        self._sequences.append(seq)
        self._num_tokens += len(seq)

    def propose(self, requests: Sequence[RequestView], num_tokens: Sequence[int]) -> list[Draft]:
        out = []
        for req, k in zip(requests, num_tokens):
            if k <= 0:
                out.append(EMPTY)
                continue
            history = req.token_ids  # may be rebuilt on every access: read it once
            context = list(history[-self.max_n :])
            mine = self._draft(context, self._index_own(req.request_id, history), k)
            past = self._draft(context, self._index, k)
            tokens = (mine if mine[1] >= past[1] else past)[0]
            out.append(Draft(tokens) if tokens else EMPTY)
        return out

    def rewind(self, request_id: str, n: int) -> None:
        # token_ids never contain rejected drafts, so the own index holds nothing to undo.
        pass

    def release(self, request_id: str) -> None:
        self._live.pop(request_id, None)

    def _index_own(self, request_id: str, history: Sequence[int]) -> Index:
        live = self._live.get(request_id)
        if live is None or len(history) < live.indexed:  # unknown or shrunk: start over
            live = self._live[request_id] = _Live()
        if len(history) > live.indexed:
            # Only the new positions, plus max_n tokens before them for their contexts.
            lo = max(0, live.indexed - self.max_n)
            new = tuple(history[lo:])
            _update(live.index, new, live.indexed - lo, self.min_n, self.max_n, 1)
            live.indexed = len(history)
        return live.index

    def _draft(self, context: list[int], index: Index, k: int) -> tuple[list[int], float]:
        """(tokens, score): the walk over one index, score = sum of the path probabilities."""
        context, tokens, prob, score, limit = list(context), [], 1.0, 0.0, k
        while len(tokens) < limit:
            n, counts = self._lookup(context, index)
            if not counts:
                break
            if not tokens and n < self.max_n:  # the first match's length bounds the draft
                limit = min(k, math.ceil(self.alpha * n))
            best = max(counts, key=counts.__getitem__)  # first max: the continuation seen first
            prob *= counts[best] / sum(counts.values())
            if prob < self.min_prob:
                break  # an unlikely path: its tokens are mostly wasted verify work
            tokens.append(best)
            context.append(best)
            score += prob
        return tokens, score

    def _lookup(self, context: list[int], index: Index) -> tuple[int, dict[int, int]]:
        """(n, next-token counts) for the longest suffix of context, n tokens long, found in index."""
        for n in range(min(self.max_n, len(context)), self.min_n - 1, -1):
            counts = index.get(tuple(context[-n:]))
            if counts:
                return n, counts
        return 0, {}
