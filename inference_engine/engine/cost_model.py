"""The verify-cost model: t(k)/t(0) for the batch and context at hand, learned online.

The engine times every decode step it runs and files the time under (drafts k, batch size,
context bucket); each key keeps the median of its last WINDOW samples, so a step slowed by
another process or a GC pause moves nothing. The start-up calibration curve (one batch of
one, short context) only seeds it: for a k never timed at this (batch, context), the seed's
shape is scaled by the measured/seed ratio at the largest timed k below it, so one timed
k already corrects its neighbours. The weight format is fixed per engine (a verifier that
switches weights with the verify width shows it as the k > 0 side of the curve).
"""
from __future__ import annotations

import statistics
from collections import deque
from typing import Optional, Sequence

WINDOW = 15      # samples per key: the median of the last 15 steps
MIN_BUCKET = 6   # contexts up to 64 tokens share a bucket


def context_bucket(tokens: int) -> int:
    """Power-of-two buckets: attention cost grows with context, weights' cost does not."""
    return max(MIN_BUCKET, (max(tokens, 1) - 1).bit_length())  # 1..64 → 6, 65..128 → 7, ...


class CostModel:
    def __init__(self, seed: Sequence[float], online: bool = True):
        """seed: t(k)/t(0) for k = 0..max_k from calibration. online=False pins it (tests)."""
        self.seed = [float(c) for c in seed]
        self.online = online
        self._samples: dict[tuple[int, int, int], deque[float]] = {}
        self._median: dict[tuple[int, int, int], float] = {}
        self._curves: dict[tuple[int, int], list[float]] = {}  # cached until a sample changes it

    @property
    def max_k(self) -> int:
        return len(self.seed) - 1

    def observe(self, k: int, batch: int, context: int, seconds: float) -> None:
        if not self.online or k > self.max_k:
            return
        key = (k, batch, context_bucket(context))
        samples = self._samples.setdefault(key, deque(maxlen=WINDOW))
        samples.append(seconds)
        self._median[key] = statistics.median(samples)
        self._curves.pop(key[1:], None)

    def seconds(self, k: int, batch: int, context: int) -> Optional[float]:
        """The robust estimate of one step's time, or None if never timed."""
        return self._median.get((k, batch, context_bucket(context)))

    def curve(self, batch: int, context: int) -> list[float]:
        """t(k)/t(0) for k = 0..max_k at this batch size and context, non-decreasing."""
        where = (batch, context_bucket(context))
        if where not in self._curves:
            self._curves[where] = self._build(*where)
        return self._curves[where]

    def _build(self, batch: int, bucket: int) -> list[float]:
        t0 = self._median.get((0, batch, bucket))
        curve, scale = [1.0], 1.0
        for k in range(1, self.max_k + 1):
            tk = self._median.get((k, batch, bucket))
            if t0 is not None and tk is not None:
                scale = (tk / t0) / self.seed[k]  # measured here: corrects the seed from k on
            curve.append(self.seed[k] * scale)
        for k in range(self.max_k - 1, 0, -1):  # a shorter verify never costs more than a longer one
            curve[k] = min(curve[k], curve[k + 1])
        return [max(1.0, c) for c in curve]
