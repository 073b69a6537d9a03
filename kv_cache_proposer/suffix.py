"""SuffixDecoding-style drafting from past requests and the request's own history.

Every n-gram (min_n <= n <= max_n) of the indexed text maps to counts of the token that
followed it, which is what a suffix tree with counts, cut at depth max_n, stores. A draft
walks greedily: match the longest suffix of the context, take its most frequent next token,
append it to the context, repeat. Past sequences are held in FIFO order and evicted (their
counts subtracted) once they total more than max_tokens, so memory stays bounded.

Own history vs past requests: both indexes are looked up with the same suffix length and
their counts are summed, so the longest suffix found in either wins, and a continuation seen
in both places scores the sum. On a tie in count the own-history token wins, since a request
tends to repeat itself (code edits, quoted text) more reliably than others do.
"""
from __future__ import annotations

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

    def __init__(self, max_tokens: int = 100_000, max_n: int = 8, min_n: int = 2,
                 min_confidence: float = 0.2):
        if max_tokens < 0 or min_n < 1 or max_n < min_n or not 0.0 <= min_confidence <= 1.0:
            raise ValueError("need max_tokens >= 0, 1 <= min_n <= max_n, 0 <= min_confidence <= 1")
        self.max_tokens, self.max_n, self.min_n = max_tokens, max_n, min_n
        self.min_confidence = min_confidence
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
            own = self._index_own(req.request_id, history)
            tokens = self._draft(list(history[-self.max_n :]), own, k)
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

    def _draft(self, context: list[int], own: Index, k: int) -> list[int]:
        tokens: list[int] = []
        while len(tokens) < k:
            counts = self._lookup(context, own)
            if not counts:
                break
            best = max(counts, key=counts.__getitem__)  # first max: own-history wins ties
            if counts[best] < self.min_confidence * sum(counts.values()):
                break  # ambiguous context: a guess here is mostly wasted verify work
            tokens.append(best)
            context.append(best)
        return tokens

    def _lookup(self, context: list[int], own: Index) -> dict[int, int]:
        """Merged next-token counts for the longest suffix of context found in either index."""
        for n in range(min(self.max_n, len(context)), self.min_n - 1, -1):
            key = tuple(context[-n:])
            mine, past = own.get(key), self._index.get(key)
            if mine or past:
                merged = dict(mine or {})
                for tok, c in (past or {}).items():
                    merged[tok] = merged.get(tok, 0) + c
                return merged
        return {}
