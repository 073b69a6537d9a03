"""The adaptive controller and the verify-cost model, on pinned curves (timings are noisy here)."""
from __future__ import annotations

import json

import pytest

from inference_engine.config import EngineConfig
from inference_engine.engine.calibration import cached_cost_curve, calibration_key, cost_curve
from inference_engine.engine.cost_model import CostModel, context_bucket
from inference_engine.engine.adaptive import AdaptiveController, best_k, expected_tokens

CPU_LIKE = [1.0, 1.6, 1.62, 1.65, 1.7, 1.72, 1.75, 1.78, 1.8]  # DESIGN.md §3, float32 on this CPU
GPU_LIKE = [1.0, 1.02, 1.03, 1.04, 1.05, 1.06, 1.07, 1.08, 1.1]
STEEP = [1.0, 1.2, 1.3, 1.33, 1.5, 1.65, 1.8, 1.96, 2.1]  # bf16+int4-like: every row costs


def _run(ctrl: AdaptiveController, cost, accept, steps: int = 40, rid: str = "r") -> list[int]:
    """accept(step) -> fraction of drafts accepted; k = 0 steps make a shadow trial."""
    ks = []
    for step in range(steps):
        k = ctrl.choose_k(rid, 8, cost)
        ks.append(k)
        ctrl.observe(rid, max(k, 1), int(max(k, 1) * accept(step)))
    return ks


def test_never_matching_drafts_choose_plain_without_probing():
    ks = _run(AdaptiveController(), CPU_LIKE, lambda s: 0.0)
    assert ks[0] > 0  # a fresh request tries drafting ...
    assert ks[3:] == [0] * 37  # ... and after failing, shadow trials keep it plain: no verify is spent probing


def test_all_accepted_grows_k_at_least_as_fast_as_plus_two():
    for cost in (CPU_LIKE, STEEP, GPU_LIKE):
        ks = _run(AdaptiveController(), cost, lambda s: 1.0, steps=8)
        assert ks[-1] == 8, (cost, ks)
        for prev, k in zip(ks, ks[1:]):
            assert k >= min(8, prev + 2) or k == 8, (cost, ks)


def test_untested_positions_inherit_the_last_tested_one():
    ctrl = AdaptiveController()
    for _ in range(6):
        ctrl.observe("r", 2, 2)  # only k = 2 ever tried, always accepted
    rates = ctrl.rates("r", 8)
    assert rates[7] == pytest.approx(rates[1]) and rates[1] > 0.9
    assert ctrl.choose_k("r", 8, CPU_LIKE) == 8  # the 0.5 prior no longer pins k at 2


def test_a_reject_position_is_learned():
    ctrl = AdaptiveController()
    for _ in range(10):
        ctrl.observe("r", 4, 1)  # position 0 always accepted, position 1 always rejected
    rates = ctrl.rates("r", 4)
    assert rates[0] > 0.85 and rates[1] < 0.25 and rates[3] < 0.25  # untested positions inherit the reject
    assert rates[2] == pytest.approx(rates[1])  # drafts after the first reject were never tested: no evidence
    assert ctrl.choose_k("r", 8, CPU_LIKE) <= 2  # not the cap: the reject bounds what is worth drafting


def test_cost_curve_decides_the_break_even():
    # 40 % acceptance: at most 1 + 0.4 + 0.16 + ... < 1.67 tokens per step. Not worth a
    # 1.6-1.8x verify, well worth a 1.02x one.
    rates = [0.4] * 8
    assert best_k(rates, CPU_LIKE) == 0
    assert best_k(rates, GPU_LIKE) > 0
    assert expected_tokens([1.0, 0.5]) == [1.0, 2.0, 2.5]
    assert best_k([1.0] * 8, [1.0, 1.01]) == 1  # a free verify of a sure draft is taken
    assert best_k([0.01] * 8, [1.0, 1.0]) == 0  # 1.01x expected is inside the noise margin


def test_decisions_follow_a_change_of_regime():
    ctrl = AdaptiveController()
    ks = _run(ctrl, CPU_LIKE, lambda s: 1.0 if s < 20 else 0.0, steps=40)
    assert ks[19] == 8
    assert ks.index(0, 20) <= 26  # copying stopped: plain within a few steps
    ks = _run(ctrl, CPU_LIKE, lambda s: 1.0, steps=10)  # shadow trials see copying resume
    assert ks[-1] == 8 and ks.index(8) <= 6


def test_method_prior_carries_across_requests_and_release_forgets():
    ctrl = AdaptiveController()
    for i in range(8):
        _run(ctrl, CPU_LIKE, lambda s: 0.0, steps=10, rid=f"old{i}")
        ctrl.release(f"old{i}")
    assert ctrl.rates()[0] < 0.2
    assert ctrl.choose_k("new", 8, CPU_LIKE) == 0  # this workload's drafts fail: start plain
    assert ctrl.rates("old0", 2) == ctrl.rates("never-seen", 2)  # released state is gone


def test_cost_model_median_ignores_outliers_and_corrects_the_seed():
    costs = CostModel(CPU_LIKE)
    assert costs.curve(1, 100) == CPU_LIKE  # nothing timed: the seed
    for _ in range(5):
        costs.observe(0, 1, 100, 0.010)
        costs.observe(2, 1, 100, 0.013)  # measured 1.3, seed said 1.62
    costs.observe(0, 1, 100, 5.0)  # one stalled step
    curve = costs.curve(1, 100)
    assert curve[2] == pytest.approx(1.3)
    assert curve[8] == pytest.approx(1.8 * 1.3 / 1.62)  # the seed's shape, scaled from k = 2 on
    assert curve[1] == pytest.approx(1.3)  # a shorter verify never costs more than a timed longer one
    assert all(a <= b for a, b in zip(curve, curve[1:]))
    assert costs.curve(4, 100) == CPU_LIKE and costs.curve(1, 5000) == CPU_LIKE  # other batch, other bucket


def test_cost_model_pinned_is_not_moved():
    costs = CostModel(CPU_LIKE, online=False)
    costs.observe(0, 1, 10, 0.01)
    costs.observe(1, 1, 10, 0.01)
    assert costs.curve(1, 10) == CPU_LIKE and costs.seconds(0, 1, 10) is None


def test_context_buckets():
    assert context_bucket(1) == context_bucket(64) != context_bucket(65)
    assert context_bucket(257) == context_bucket(512) != context_bucket(513)


def test_engine_times_its_steps(tiny_loaded):
    from inference_engine.engine.llm import LLM
    from inference_engine.types import SamplingParams, SpeculativeParams

    import time

    llm = LLM(tiny_loaded, EngineConfig(adaptive_max_k=4))  # measured seed, online model
    prompt = list(range(100, 140)) * 2
    llm.core.speculator.costs  # calibrate before the timed request
    t0 = time.perf_counter()
    out = llm.generate(prompt, SamplingParams(max_tokens=24, ignore_eos=True), SpeculativeParams("auto", 4))
    wall = time.perf_counter() - t0
    one_step = llm.core.speculator.costs.seconds(0, 1, len(prompt) + 10)  # plain (or shadow) steps were timed
    decode_steps = out.spec.verify_steps - 1  # after the prefill; a median is at most twice the mean (Markov)
    assert one_step is not None and 0 < one_step < 2 * wall / decode_steps  # one step, not the request


def test_pinned_cost_curve_skips_measurement(tiny_llm):
    assert cost_curve(tiny_llm.core.verifier, EngineConfig(cost_curve=(1.0, 2.0))) == [1.0, 2.0]


def test_verify_cost_curve_is_measured_on_the_real_verifier(tiny_llm, tmp_path):
    curve = cost_curve(tiny_llm.core.verifier, EngineConfig(adaptive_max_k=4, calibration_file=""))
    assert len(curve) == 5 and tiny_llm.core.verifier.new_cache().length == 0


def test_measured_curve_is_time_of_k_over_time_of_0_made_monotone():
    """measure_cost_curve against work of known length (sleeps): t(k)/t(0), and a dip (k = 2 faster
    than k = 1, timing noise) raised to its predecessor."""
    import time

    from inference_engine.engine.calibration import measure_cost_curve

    ms = {0: 10, 1: 20, 2: 15, 3: 30}
    curve = measure_cost_curve(lambda k: time.sleep(ms[k] / 1e3), 3, repeats=3)
    assert curve == pytest.approx([1.0, 2.0, 2.0, 3.0], rel=0.25)


def test_calibration_is_keyed_by_machine_and_format(tiny_llm, tmp_path):
    import torch

    key = calibration_key(tiny_llm.core.verifier, 4)
    assert f"threads{torch.get_num_threads()}" in key and torch.__version__ in key and "float32" in key
    path = tmp_path / "calibration.json"
    cost_curve(tiny_llm.core.verifier, EngineConfig(adaptive_max_k=4, calibration_file=str(path)))
    assert list(json.loads(path.read_text())) == [key]


def test_cost_curve_cache_is_reused(tmp_path):
    path = tmp_path / "calibration.json"
    assert cached_cost_curve(path, "m|cpu|float32", lambda: [1.0, 1.5]) == [1.0, 1.5]

    def must_not_measure():
        raise AssertionError("cached curve should have been reused")

    assert cached_cost_curve(path, "m|cpu|float32", must_not_measure) == [1.0, 1.5]
    assert json.loads(path.read_text()) == {"m|cpu|float32": [1.0, 1.5]}


def test_cost_curve_cache_keeps_the_newest_curves(tmp_path):
    from inference_engine.engine.calibration import MAX_CURVES

    path = tmp_path / "calibration.json"
    for i in range(MAX_CURVES + 3):
        cached_cost_curve(path, f"m{i}", lambda i=i: [1.0, 1.0 + i])
    kept = json.loads(path.read_text())
    assert list(kept) == [f"m{i}" for i in range(3, MAX_CURVES + 3)] and kept[f"m{MAX_CURVES + 2}"] == [1.0, MAX_CURVES + 3.0]


def test_an_in_process_engine_shares_the_servers_calibration_cache(tiny_loaded, tmp_path, monkeypatch):
    """LLM(...) with the default EngineConfig reads and writes the same file as `kakeya serve`
    (<cache dir>/kakeya/calibration.json), so its first `auto` request does not time the verifier
    again; "" turns the cache off."""
    from inference_engine.engine.llm import LLM

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    llm = LLM(tiny_loaded)
    key = calibration_key(llm.core.verifier, EngineConfig().adaptive_max_k)
    path = tmp_path / "kakeya" / "calibration.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({key: [1.0] + [9.0] * EngineConfig().adaptive_max_k}))  # not what this CPU measures
    assert llm.core.speculator.costs.seed[1] == 9.0
    assert LLM(tiny_loaded, EngineConfig(calibration_file="")).core.speculator.costs.seed[1] < 9.0


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
