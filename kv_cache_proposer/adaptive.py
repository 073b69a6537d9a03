"""Adaptive draft length: choose k per step to maximise expected tokens per second.

Two measurements drive it, nothing hard-coded per device:
- the verify-cost curve cost[k] = t(k drafts) / t(0 drafts), timed on the device in use at
  startup (`measure_cost_curve`) and cached per model/device/dtype;
- acceptance per draft position, tracked per request (seeded from the method's running
  average): a[i] = P(draft i accepted | drafts before it accepted).
With k drafts a step yields E(k) = 1 + sum_{i<=k} prod_{j<=i} a[j] tokens at cost[k], so the
controller picks argmax E(k)/cost[k] (k = 0 when no k beats plain decoding), and re-probes
with a short draft every `probe_every` plain steps so a request whose text turns repetitive
is noticed.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

PRIOR = 0.5      # acceptance before anything is observed
EMA = 0.3        # weight of the newest observation


def measure_cost_curve(run: Callable[[int], None], max_k: int, repeats: int = 3) -> list[float]:
    """run(k) does one verify forward with k draft tokens. Returns [1.0, t(1)/t(0), ...],
    made non-decreasing (a longer verify is never cheaper; dips are timing noise)."""
    run(max_k)  # warm-up
    times = []
    for k in range(max_k + 1):
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(k)
            samples.append(time.perf_counter() - t0)
        times.append(statistics.median(samples))
    curve, worst = [], 0.0
    for t in times:
        worst = max(worst, t / times[0])
        curve.append(worst)
    return curve


def cached_cost_curve(path: Path, key: str, measure: Callable[[], list[float]]) -> list[float]:
    """The cost curve for `key` (model/device/dtype) from a JSON cache file, measuring once."""
    data = json.loads(path.read_text()) if path.exists() else {}
    if key not in data:
        data[key] = measure()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))
    return data[key]


@dataclass(slots=True)
class _Acceptance:
    per_pos: list[float] = field(default_factory=list)
    plain_streak: int = 0

    def rate(self, i: int, prior: float) -> float:
        return self.per_pos[i] if i < len(self.per_pos) else prior


class AdaptiveController:
    def __init__(self, cost: Sequence[float], draft_cost: float = 0.0, probe_every: int = 16, probe_k: int = 2):
        """cost[k]: relative time of a verify with k drafts (cost[0] == 1). draft_cost: time of
        drafting one token relative to a plain step (0 for n-gram/suffix lookups)."""
        self.cost = list(cost)
        self.draft_cost = draft_cost
        self.probe_every, self.probe_k = probe_every, probe_k
        self._requests: dict[str, _Acceptance] = {}
        self._method = _Acceptance()  # running average across requests: the prior for new ones

    @property
    def max_k(self) -> int:
        return len(self.cost) - 1

    def expected_speedup(self, rates: Sequence[float], k: int) -> float:
        tokens, survive = 1.0, 1.0
        for a in rates[:k]:
            survive *= a
            tokens += survive
        return tokens / (self.cost[k] + self.draft_cost * k)

    def choose_k(self, request_id: str, k_max: int) -> int:
        state = self._requests.setdefault(request_id, _Acceptance())
        k_max = min(k_max, self.max_k)
        rates = [state.rate(i, self._method.rate(i, PRIOR)) for i in range(k_max)]
        best = max(range(k_max + 1), key=lambda k: (self.expected_speedup(rates, k), -k))
        if best == 0 and k_max > 0:
            state.plain_streak += 1
            if state.plain_streak >= self.probe_every:  # re-probe: text may have become repetitive
                state.plain_streak = 0
                return min(self.probe_k, k_max)
        elif best:
            state.plain_streak = 0
        return best

    def observe(self, request_id: str, drafted: int, accepted: int) -> None:
        """A verify step checked `drafted` tokens and accepted the first `accepted`."""
        for state in (self._requests.setdefault(request_id, _Acceptance()), self._method):
            for i in range(min(drafted, accepted + 1)):  # positions past the first reject were not tested
                hit = 1.0 if i < accepted else 0.0
                if i < len(state.per_pos):
                    state.per_pos[i] += EMA * (hit - state.per_pos[i])
                else:
                    state.per_pos.append(EMA * hit + (1 - EMA) * PRIOR)

    def release(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    def rates(self, request_id: Optional[str] = None) -> list[float]:
        state = self._requests.get(request_id, self._method) if request_id else self._method
        return list(state.per_pos)
