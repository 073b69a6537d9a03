"""Rejection sampling keeps the verifier's distribution exactly (chi-square, fixed seeds)."""
from __future__ import annotations

import torch

from inference_engine.engine.acceptance import accept_greedy, accept_sampled

# Chi-square critical values at p = 0.001 (df = V - 1); a correct sampler fails ~1 in 1000 seeds,
# and the seeds are fixed, so the test is deterministic.
CHI2_CRIT_001 = {4: 18.47, 5: 20.52}
TRIALS = 6000


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    mask = expected > 0
    assert counts[~mask].sum() == 0, "sampled a token of probability zero"
    return float(((counts[mask] - expected[mask]) ** 2 / expected[mask]).sum())


def _dist(*xs):
    t = torch.tensor(xs, dtype=torch.float32)
    return t / t.sum()


P = torch.stack([_dist(5, 1, 2, 1, 1, 3), _dist(1, 4, 1, 2, 2, 2), _dist(2, 2, 2, 1, 1, 4)])  # [k+1=3, V=6]
Q = torch.stack([_dist(1, 3, 1, 1, 3, 1), _dist(3, 1, 1, 1, 1, 1)])  # [k=2, V=6]

# k = 3 drafts. Row i of P3 is the verifier's distribution after the first i drafts; rows differ
# clearly, so drawing position i from another row (e.g. the bonus from row k-1) shows.
P3 = torch.stack([_dist(5, 1, 2, 1, 1, 3), _dist(1, 6, 1, 2, 2, 2), _dist(2, 2, 6, 1, 1, 2), _dist(1, 3, 1, 6, 1, 1)])
Q3 = torch.stack([_dist(3, 2, 2, 1, 2, 2), _dist(2, 4, 2, 1, 2, 1), _dist(1, 2, 4, 2, 2, 1)])  # near P3, not equal


def _conditionals(trials: int, seed: int, draw_draft, draft_probs) -> torch.Tensor:
    """counts[i, v]: how often token v was emitted at position i among the trials whose first i
    drafts were accepted. Rejection sampling is exact iff each row follows P3[i] (i = 3: the bonus)."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(4, 6)
    for _ in range(trials):
        d = draw_draft(gen)
        out = accept_sampled(P3, d, draft_probs, lambda i: gen)
        for i, tok in enumerate(out.tokens):
            counts[i, tok] += 1  # tokens before i are accepted drafts: a recovered token never equals its draft
    return counts


def test_rejection_sampling_conditionals_match_target():
    # Drafts sampled from Q3: every position, the bonus included, follows the verifier's row.
    counts = _conditionals(6000, 1, lambda g: [int(torch.multinomial(Q3[i], 1, generator=g)) for i in range(3)], Q3)
    assert counts[3].sum() > 1000 and counts[1].sum() < 5000, counts.sum(-1)  # bonus often, rejections too
    for i in range(4):
        assert chi_square(counts[i], P3[i]) < CHI2_CRIT_001[5], (i, counts[i])


def test_point_mass_conditionals_match_target():
    # A deterministic (n-gram) draft [0, 1, 2]: q is a point mass; accepted with probability p(d).
    counts = _conditionals(6000, 2, lambda g: [0, 1, 2], None)
    assert counts[3].sum() > 300, counts.sum(-1)  # all three accepted often enough to test the bonus
    for i in range(4):
        assert chi_square(counts[i], P3[i]) < CHI2_CRIT_001[5], (i, counts[i])


def _first(draft, draft_probs, seed):
    gen = torch.Generator().manual_seed(seed)
    first = torch.zeros(6)
    for _ in range(TRIALS):
        out = accept_sampled(P, draft, draft_probs, lambda i: gen)
        first[out.tokens[0]] += 1
    return first


def test_rejection_sampling_with_draft_probs_matches_target():
    # Drafts sampled from Q, far from P: the emitted first token must follow P[0] whatever the draft was.
    gen = torch.Generator().manual_seed(1)
    first = torch.zeros(6)
    for _ in range(TRIALS):
        d = [int(torch.multinomial(Q[i], 1, generator=gen)) for i in range(2)]
        out = accept_sampled(P, d, Q, lambda i: gen)
        first[out.tokens[0]] += 1
    assert chi_square(first, P[0]) < CHI2_CRIT_001[5]


def test_rejection_sampling_bad_draft_still_matches_target():
    # A draft the target rarely agrees with: mostly recovered tokens, same distribution.
    first = _first([3, 4], None, seed=3)
    assert chi_square(first, P[0]) < CHI2_CRIT_001[5]


def test_wrong_distribution_is_detected():
    # The test has power: sampling from Q instead of P fails it.
    gen = torch.Generator().manual_seed(4)
    counts = torch.bincount(torch.multinomial(Q[0], TRIALS, replacement=True, generator=gen), minlength=6).float()
    assert chi_square(counts, P[0]) > CHI2_CRIT_001[5]


def test_zero_probability_tokens_never_sampled():
    p = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0]])
    gen = torch.Generator().manual_seed(5)
    for _ in range(200):
        out = accept_sampled(p, [3], None, lambda i: gen)  # draft has p = 0: always rejected
        assert out.num_accepted == 0 and out.tokens[0] in (1, 2)


def test_identical_draft_and_target_accept_everything():
    gen = torch.Generator().manual_seed(6)
    out = accept_sampled(P, [0, 1], P[:2], lambda i: gen)
    # p == q: acceptance probability is 1 for any draft token
    assert out.num_accepted == 2 and out.kind == "bonus" and len(out.tokens) == 3


def test_greedy_accept_vocabulary():
    logits = torch.tensor([[0.0, 9.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 9.0]])  # argmax 1, 0, 2
    assert accept_greedy(logits, [1, 0]).tokens == [1, 0, 2]  # all accepted + bonus
    assert accept_greedy(logits, [1, 0]).kind == "bonus"
    rec = accept_greedy(logits, [1, 2])
    assert (rec.tokens, rec.num_accepted, rec.kind) == ([1, 0], 1, "recovered")
    plain = accept_greedy(logits[:1], [])
    assert (plain.tokens, plain.kind) == ([1], "plain")


def test_a_rejected_model_draft_is_counted_and_recovered():
    """Rejection sampling's bookkeeping: a draft token the target gives probability zero is always
    rejected, and the step says so (1 drafted, 0 accepted, the token recovered from the residual)."""
    p = torch.stack([_dist(0, 1, 1, 0), _dist(1, 1, 1, 1)])  # [k+1=2, V=4]
    q = _dist(1, 1, 1, 1)[None]  # [k=1, V=4]: the draft model could draft token 3
    gen = torch.Generator().manual_seed(8)
    for _ in range(50):
        out = accept_sampled(p, [3], q, lambda i: gen)
        assert (out.num_drafted, out.num_accepted, out.kind) == (1, 0, "recovered") and out.tokens[0] in (1, 2)
