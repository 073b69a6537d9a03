"""Verification as a pure function: drafts + verifier distribution → accepted tokens.

Vocabulary (vLLM/TGI): a draft token is *accepted* when the verifier agrees; at the first
rejection one *recovered* token is sampled from the residual distribution; when every draft
passes the verifier's next position yields a *bonus* token. With no drafts the step is *plain*.
Greedy: exact match against argmax. Sampling: Leviathan/Chen rejection sampling, which keeps
the output distribution exactly the verifier's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

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


def accept_sampled(
    probs: torch.Tensor,
    draft: Sequence[int],
    draft_probs: Optional[torch.Tensor],
    generator: Optional[torch.Generator],
) -> Acceptance:
    """probs [k+1, V]: the verifier's (filtered) distributions; draft_probs [k, V] or None for a
    deterministic drafter (n-gram, suffix), whose draft is a point mass q(d) = 1."""
    k = len(draft)
    if k:
        d = torch.tensor(draft, device=probs.device)
        p_d = probs[:k].gather(-1, d[:, None]).squeeze(-1)  # [k]
        q_d = draft_probs[:k].gather(-1, d[:, None]).squeeze(-1) if draft_probs is not None else torch.ones_like(p_d)
        u = torch.rand(k, generator=generator, device=probs.device)
        ok = (u * q_d < p_d).tolist()  # accept with probability min(1, p/q)
        for i in range(k):
            if not ok[i]:
                if draft_probs is not None:
                    residual = (probs[i] - draft_probs[i]).clamp_min(0)  # [V]
                else:
                    residual = probs[i].clone()
                    residual[draft[i]] = 0
                total = residual.sum()
                # p == q exactly leaves no residual mass; then p itself is the right distribution
                dist = residual / total if total > 0 else probs[i]
                token = int(sample(dist[None], generator)[0])
                return Acceptance(list(draft[:i]) + [token], k, i)
    token = int(sample(probs[k : k + 1], generator)[0])
    return Acceptance(list(draft) + [token], k, k)
