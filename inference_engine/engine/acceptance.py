"""Verification as a pure function: drafts + verifier distribution → accepted tokens.

Vocabulary (vLLM/TGI): a draft token is *accepted* when the verifier agrees; at the first
rejection one *recovered* token is sampled from the residual distribution; when every draft
passes the verifier's next position yields a *bonus* token. With no drafts the step is *plain*.
Greedy: exact match against argmax. Sampling: Leviathan/Chen rejection sampling, which keeps
the output distribution exactly the verifier's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .sampling import sample


@dataclass(frozen=True, slots=True)
class Acceptance:
    tokens: list[int]   # accepted drafts followed by exactly one recovered/bonus/plain token
    num_drafted: int
    num_accepted: int

    @property
    def kind(self) -> str:
        """What the final token is: 'plain', 'bonus' or 'recovered'."""
        if self.num_drafted == 0:
            return "plain"
        return "bonus" if self.num_accepted == self.num_drafted else "recovered"


def accept_greedy(logits: torch.Tensor, draft: Sequence[int]) -> Acceptance:
    """logits [k+1, V] of the verifier at [last, d1..dk]."""
    target = logits.argmax(-1).tolist()  # [k+1]
    n = 0
    while n < len(draft) and draft[n] == target[n]:
        n += 1
    return Acceptance(list(draft[:n]) + [target[n]], len(draft), n)


GeneratorAt = Callable[[int], Optional[torch.Generator]]  # draft position → its random stream


def accept_sampled(
    probs: torch.Tensor,
    draft: Sequence[int],
    draft_probs: Optional[torch.Tensor],
    generator_at: GeneratorAt,
) -> Acceptance:
    """probs [k+1, V]: the verifier's (filtered) distributions. draft_probs [k, V] for a model
    drafter, or None for a deterministic drafter (n-gram, suffix): a point mass."""
    if draft_probs is None:
        return _accept_point_mass(probs, draft, generator_at)
    return _rejection_sample(probs, draft, draft_probs, generator_at(0))


def _accept_point_mass(probs: torch.Tensor, draft: Sequence[int], generator_at: GeneratorAt) -> Acceptance:
    """Sample each position from the verifier exactly as plain decoding would and accept the
    draft token iff it is the sample. Acceptance probability is p(d), as in rejection sampling
    with q = point mass, and the output is the plain sample itself: with per-position seeds,
    a seeded request gives the same text with or without speculation."""
    for i in range(len(draft) + 1):
        token = int(sample(probs[i : i + 1], generator_at(i))[0])
        if i == len(draft) or token != draft[i]:
            return Acceptance(list(draft[:i]) + [token], len(draft), i)
    raise AssertionError("unreachable")


def _rejection_sample(
    probs: torch.Tensor, draft: Sequence[int], draft_probs: torch.Tensor, generator: Optional[torch.Generator]
) -> Acceptance:
    """Leviathan/Chen: accept d_i with probability min(1, p/q); at the first rejection sample
    from norm(max(0, p - q)); after all pass, a bonus token from p."""
    k = len(draft)
    d = torch.tensor(draft, device=probs.device, dtype=torch.long)
    p_d = probs[:k].gather(-1, d[:, None]).squeeze(-1)  # [k]
    q_d = draft_probs[:k].to(probs.device).gather(-1, d[:, None]).squeeze(-1)  # [k]
    u = torch.rand(k, generator=generator, device=probs.device)
    ok = (u * q_d < p_d).tolist()
    for i in range(k):
        if not ok[i]:
            residual = (probs[i] - draft_probs[i].to(probs.device)).clamp_min(0)  # [V]
            total = residual.sum()
            # p == q exactly leaves no residual mass; then p itself is the right distribution
            dist = residual / total if total > 0 else probs[i]
            token = int(sample(dist[None], generator)[0])
            return Acceptance(list(draft[:i]) + [token], k, i)
    token = int(sample(probs[k : k + 1], generator)[0])
    return Acceptance(list(draft) + [token], k, k)
