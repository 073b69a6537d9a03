"""The adaptive controller: k from measured acceptance and a measured verify-cost curve."""
from __future__ import annotations

import json

import pytest

from inference_engine.config import EngineConfig
from inference_engine.engine.calibration import cost_curve
from kv_cache_proposer.adaptive import AdaptiveController, cached_cost_curve

CPU_LIKE = [1.0, 1.6, 1.62, 1.65, 1.7, 1.72, 1.75, 1.78, 1.8]  # DESIGN.md §3, float32 on this CPU
GPU_LIKE = [1.0, 1.02, 1.03, 1.04, 1.05, 1.06, 1.07, 1.08, 1.1]


def _run(ctrl: AdaptiveController, accept_all: bool, steps: int = 40) -> list[int]:
    ks = []
    for _ in range(steps):
        k = ctrl.choose_k("r", 8)
        ks.append(k)
        if k:
            ctrl.observe("r", k, k if accept_all else 0)
    return ks


def test_never_matching_drafts_choose_plain():
    ks = _run(AdaptiveController(CPU_LIKE, probe_every=16), accept_all=False)
    assert ks[-10:].count(0) >= 9  # plain decoding, with an occasional re-probe
    assert any(k > 0 for k in ks[20:])  # ... which does happen


def test_repetitive_drafts_choose_long_k():
    ks = _run(AdaptiveController(CPU_LIKE), accept_all=True)
    assert ks[-1] == 8


def test_cost_curve_decides_the_break_even():
    # 40 % acceptance: at most 1 + 0.4 + 0.16 + ... < 1.67 tokens per step. Not worth a
    # 1.6-1.8x verify, well worth a 1.02x one.
    rates = [0.4] * 8
    cpu, gpu = AdaptiveController(CPU_LIKE), AdaptiveController(GPU_LIKE)
    assert max(range(9), key=lambda k: cpu.expected_speedup(rates, k)) == 0
    assert max(range(9), key=lambda k: gpu.expected_speedup(rates, k)) > 0


def test_acceptance_tracked_per_position_and_released():
    ctrl = AdaptiveController(CPU_LIKE)
    for _ in range(10):
        ctrl.observe("r", 4, 1)  # position 1 always accepted, position 2 always rejected
    rates = ctrl.rates("r")
    assert len(rates) == 2 and rates[0] > 0.9 and rates[1] < 0.1
    assert ctrl.choose_k("r", 8) == 1
    ctrl.release("r")
    assert ctrl.rates("r") == ctrl.rates()  # falls back to the method-wide average


def test_pinned_cost_curve_skips_measurement(tiny_llm):
    assert cost_curve(tiny_llm.core.verifier, EngineConfig(cost_curve=(1.0, 2.0))) == [1.0, 2.0]


def test_verify_cost_curve_is_measured_on_the_real_verifier(tiny_llm, tmp_path):
    curve = cost_curve(tiny_llm.core.verifier, EngineConfig(adaptive_max_k=4))
    assert len(curve) == 5 and curve[0] == 1.0
    assert all(a <= b for a, b in zip(curve, curve[1:]))  # non-decreasing by construction
    assert tiny_llm.core.verifier.new_cache().length == 0


def test_cost_curve_cache_is_reused(tmp_path):
    path = tmp_path / "calibration.json"
    assert cached_cost_curve(path, "m|cpu|float32", lambda: [1.0, 1.5]) == [1.0, 1.5]

    def must_not_measure():
        raise AssertionError("cached curve should have been reused")

    assert cached_cost_curve(path, "m|cpu|float32", must_not_measure) == [1.0, 1.5]
    assert json.loads(path.read_text()) == {"m|cpu|float32": [1.0, 1.5]}


@pytest.mark.real_model
def test_auto_speeds_up_copying_on_smollm2(smol_loaded):
    from inference_engine.engine.llm import LLM
    from inference_engine.tokenizer import apply_chat_template
    from inference_engine.types import SamplingParams, SpeculativeParams

    smol_llm = LLM(smol_loaded, EngineConfig(cost_curve=tuple(CPU_LIKE)))  # measured timings are noisy on shared VMs
    code = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * 3}\n" for i in range(6))
    ids = apply_chat_template(smol_llm.tokenizer, [{"role": "user", "content": f"Repeat this code exactly:\n{code}"}])
    sp = SamplingParams(max_tokens=48)
    plain = smol_llm.generate(ids, sp, SpeculativeParams("none", 0))
    auto = smol_llm.generate(ids, sp, SpeculativeParams("auto", 8))
    assert auto.token_ids == plain.token_ids
    assert auto.spec.verify_steps < 0.7 * plain.spec.verify_steps  # fewer verifier forwards
