"""Sampling filters as pure tensor functions."""
from __future__ import annotations

import math

import torch

from inference_engine.engine.sampling import filter_logits, make_generator, sample, target_probs
from inference_engine.types import SamplingParams

LOGITS = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))


def _kept(params):
    return torch.isfinite(filter_logits(LOGITS, params))[0].tolist()


def test_temperature_one_keeps_distribution():
    p = target_probs(LOGITS, SamplingParams(temperature=1.0))
    assert torch.allclose(p, torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]), atol=1e-6)


def test_low_temperature_sharpens():
    p = target_probs(LOGITS, SamplingParams(temperature=0.1))
    assert p[0, 0] > 0.99


def test_top_k():
    assert _kept(SamplingParams(temperature=1, top_k=2)) == [True, True, False, False, False]


def test_top_p_keeps_smallest_set_reaching_p():
    assert _kept(SamplingParams(temperature=1, top_p=0.7)) == [True, True, False, False, False]
    assert _kept(SamplingParams(temperature=1, top_p=0.71)) == [True, True, True, False, False]
    assert _kept(SamplingParams(temperature=1, top_p=0.01)) == [True, False, False, False, False]


def test_min_p():
    # threshold 0.25 * 0.5 = 0.125: keeps 0.5, 0.2, 0.15
    assert _kept(SamplingParams(temperature=1, min_p=0.25)) == [True, True, True, False, False]


def test_filters_renormalise():
    p = target_probs(LOGITS, SamplingParams(temperature=1, top_k=2))
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-6) and math.isclose(float(p[0, 0]), 0.5 / 0.7, rel_tol=1e-5)


def test_seeded_generator_reproducible():
    p = torch.full((1, 1000), 1e-3)
    a = [int(sample(p, make_generator(7, torch.device("cpu")))[0]) for _ in range(3)]
    assert len(set(a)) == 1
    assert make_generator(None, torch.device("cpu")) is None


def test_top_k_of_one_is_the_argmax():
    assert _kept(SamplingParams(temperature=1, top_k=1)) == [True, False, False, False, False]


def test_min_p_of_one_keeps_only_the_top_token():
    p = target_probs(LOGITS, SamplingParams(temperature=1, min_p=1.0))
    assert p[0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_filters_apply_to_each_verify_row_on_its_own():
    """Under speculation target_probs sees k+1 rows at once: each row's top-k, top-p and min-p are
    its own (min-p keeps p >= min_p × that row's top probability), written out here per row."""
    rows = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05], [0.04, 0.06, 0.1, 0.3, 0.5],
                                   [0.1, 0.15, 0.2, 0.25, 0.3]]))  # [3, V]: maxima 0.5, 0.5, 0.3
    for params in (SamplingParams(temperature=1, min_p=0.35), SamplingParams(temperature=1, top_p=0.6),
                   SamplingParams(temperature=1, top_k=2)):
        together = target_probs(rows, params)
        alone = torch.cat([target_probs(rows[i : i + 1], params) for i in range(3)])
        assert torch.equal(together, alone), params
    kept = torch.isfinite(filter_logits(rows, SamplingParams(temperature=1, min_p=0.35)))
    probs = rows.exp()
    assert kept.tolist() == (probs >= 0.35 * probs.max(-1, keepdim=True).values).tolist()


def test_top_k_of_three():
    assert _kept(SamplingParams(temperature=1, top_k=3)) == [True, True, True, False, False]
