"""Adaptive draft length: choose k per step to maximise expected tokens per unit of verify time.

With per-position acceptance a[i] = P(draft i accepted | drafts before it accepted), a step with
k drafts yields E(k) = 1 + sum_{i<k} prod_{j<=i} a[j] tokens and costs cost[k] = t(k)/t(0)
(measured by the engine: a calibration seed refined online, see cost_model.py). The
controller picks argmax E(k)/cost[k] and drafts only when that beats plain decoding by MARGIN.

Acceptance is estimated per request from discounted counts (old evidence fades, so a request
whose text turns repetitive, or stops being so, is followed within a few steps):
- position i's estimate is its own hits and trials plus CHAIN_WEIGHT pseudo-trials at the
  estimate of position i-1, so a position never tested inherits the last tested one: after
  k drafts all pass, k+1.. look as good and k grows (no fixed prior pinning it down);
- a new request starts with PRIOR_WEIGHT pseudo-trials at position 0 at the method-wide
  position-0 rate over earlier requests (0.5 on a fresh engine); they decay like real
  evidence, so after a few steps the request's own outcomes decide alone.
While a request decodes plainly, the engine compares the proposer's (free) first draft token
with the emitted one — a shadow trial at position 0 — so no verify is ever spent to probe.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

PRIOR = 0.5          # position-0 acceptance before any request was observed
PRIOR_WEIGHT = 2.0   # pseudo-trials a new request starts with at position 0
CHAIN_WEIGHT = 1.0   # pseudo-trials a position's estimate borrows from the position before it
DECAY = 0.7          # per observation: evidence 3 steps back counts a third
METHOD_DECAY = 0.98  # the cross-request prior forgets more slowly
MARGIN = 1.02        # draft only when E(k)/cost[k] beats plain by 2 %: noise must not buy losses


@dataclass(slots=True)
class Counts:
    """Discounted per-position acceptance evidence: hits[i] of trials[i]."""
    hits: list[float] = field(default_factory=list)
    trials: list[float] = field(default_factory=list)

    def add(self, drafted: int, accepted: int, decay: float) -> None:
        self.hits = [h * decay for h in self.hits]
        self.trials = [t * decay for t in self.trials]
        tested = min(drafted, accepted + 1)  # positions past the first reject were not tested
        while len(self.trials) < tested:
            self.hits.append(0.0)
            self.trials.append(0.0)
        for i in range(tested):
            self.trials[i] += 1.0
            self.hits[i] += 1.0 if i < accepted else 0.0

    def rates(self, n: int, first_prior: float) -> list[float]:
        """Estimates for positions 0..n-1; an untested position takes its predecessor's."""
        out, prior = [], first_prior
        for i in range(n):
            h, t = (self.hits[i], self.trials[i]) if i < len(self.trials) else (0.0, 0.0)
            prior = (h + CHAIN_WEIGHT * prior) / (t + CHAIN_WEIGHT)
            out.append(prior)
        return out


def expected_tokens(rates: Sequence[float]) -> list[float]:
    """E(k) for k = 0..len(rates): tokens a step with k drafts yields on average."""
    out, tokens, survive = [1.0], 1.0, 1.0
    for a in rates:
        survive *= a
        tokens += survive
        out.append(tokens)
    return out


def best_k(rates: Sequence[float], cost: Sequence[float], draft_cost: float = 0.0) -> int:
    """argmax_k E(k)/(cost[k] + draft_cost*k); 0 unless some k beats plain by MARGIN."""
    best, best_value = 0, MARGIN / cost[0]
    for k, tokens in enumerate(expected_tokens(rates[: len(cost) - 1])):
        value = tokens / (cost[k] + draft_cost * k)
        if value > best_value:
            best, best_value = k, value
    return best


class AdaptiveController:
    def __init__(self, draft_cost: float = 0.0):
        """draft_cost: time of drafting one token relative to a plain step (0 for lookups)."""
        self.draft_cost = draft_cost
        self._requests: dict[str, Counts] = {}
        self._method = Counts()  # across requests: the position-0 prior of new ones

    def choose_k(self, request_id: str, k_max: int, cost: Sequence[float]) -> int:
        """cost[k] = t(k)/t(0) for this step's batch and context; k_max caps the draft."""
        k_max = min(k_max, len(cost) - 1)
        if k_max <= 0:
            return 0
        return best_k(self._counts(request_id).rates(k_max, PRIOR), cost, self.draft_cost)

    def observe(self, request_id: str, drafted: int, accepted: int) -> None:
        """A verify (or shadow) step checked `drafted` tokens and accepted the first `accepted`."""
        self._counts(request_id).add(drafted, accepted, DECAY)
        self._method.add(min(drafted, 1), min(accepted, 1), METHOD_DECAY)

    def _counts(self, request_id: str) -> Counts:
        counts = self._requests.get(request_id)
        if counts is None:  # a new request: seeded with what earlier requests showed
            first = self._method.rates(1, PRIOR)[0]
            counts = self._requests[request_id] = Counts([PRIOR_WEIGHT * first], [PRIOR_WEIGHT])
        return counts

    def release(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    def rates(self, request_id: Optional[str] = None, n: int = 8) -> list[float]:
        """Acceptance estimates for positions 0..n-1 (method-wide position 0 without an id)."""
        if request_id is None:
            return self._method.rates(1, PRIOR)
        if request_id not in self._requests:
            return Counts().rates(n, self._method.rates(1, PRIOR)[0])
        return self._requests[request_id].rates(n, PRIOR)
