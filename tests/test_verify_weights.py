"""Verify-width-aware weights (docs/verify_weights.md) on the tiny random Qwen3: `same` and float32
change nothing; under `bf16` a one-token step computes exactly what the int4 model does and a wide
forward exactly what the bfloat16 model does; every token the engine emits is the argmax of the
weights that produced it; `auto` decides from measured timings and frees what it does not keep."""
from __future__ import annotations

import copy
from typing import Callable, Optional

import pytest
import torch

from inference_engine.config import EngineConfig, ModelConfig
from inference_engine.engine.llm import LLM
from inference_engine.engine.verifier import Verifier
from inference_engine.models import LoadedModel, load_model
from inference_engine.models.quantize import quantize
from inference_engine.models.verify_weights import WIDTHS, choose_width
from inference_engine.types import SamplingParams, SpeculativeParams

PROMPT = [151644, 872, 198, 9707, 11, 1879, 30, 151645, 198, 151644, 77091, 198]
REPETITIVE = PROMPT + [9707, 11, 1879, 30] * 6  # ngram drafts get accepted, so verifies are wide
NGRAM = SpeculativeParams("ngram", 6)


def _load(path, dtype="bfloat16", quantization="int4", verify_weights="auto") -> LoadedModel:
    return load_model(ModelConfig(model=str(path), device="cpu", dtype=dtype, quantization=quantization,
                                  verify_weights=verify_weights))


@pytest.fixture(scope="module")
def bf16(tiny_qwen3_dir) -> LoadedModel:
    return _load(tiny_qwen3_dir, quantization="none")


@pytest.fixture(scope="module")
def int4_same(tiny_qwen3_dir) -> LoadedModel:
    return _load(tiny_qwen3_dir, verify_weights="same")


@pytest.fixture(scope="module")
def int4_bf16(tiny_qwen3_dir) -> LoadedModel:
    return _load(tiny_qwen3_dir, verify_weights="bf16")


@pytest.fixture(scope="module")
def int4_auto(tiny_qwen3_dir) -> LoadedModel:
    """Loaded under `auto` but not yet decided: no verifier is ever built on it, only on copies."""
    return _load(tiny_qwen3_dir, verify_weights="auto")


def _engine(loaded: LoadedModel) -> LLM:
    # drafts from single-token matches too: the random model rarely repeats longer n-grams, and
    # the tests need wide verifies as well as plain steps
    return LLM(loaded, EngineConfig(prefix_cache=False, ngram_min=1))


def _generate(loaded: LoadedModel, prompt=REPETITIVE, spec=NGRAM, n: int = 40) -> list[int]:
    llm = _engine(loaded)
    return llm.generate(prompt, SamplingParams(max_tokens=n, ignore_eos=True), spec).token_ids


def test_same_and_float32_change_nothing(tiny_qwen3_dir, tiny_loaded, bf16, int4_same):
    """`same` on bfloat16+int4, and `bf16` requested in float32, are today's engine: no copy, and
    the tokens of a model quantized the way it was before this option existed."""
    today = copy.deepcopy(bf16.model)
    quantize(today, "int4")
    assert int4_same.model.verify_copy is None
    assert Verifier(int4_same.model).verify_weights == "same"
    assert _generate(int4_same) == _generate(LoadedModel(today, bf16.tokenizer, bf16.info))
    f32 = _load(tiny_qwen3_dir, dtype="float32", verify_weights="bf16")
    v = Verifier(f32.model)
    assert f32.model.verify_copy is None and v.verify_weights == "same" and v.verify_weights_bytes == 0
    today32 = copy.deepcopy(tiny_loaded.model)
    quantize(today32, "int4")
    # float32 activations on the packed kernels are slow: fewer tokens
    assert _generate(f32, n=16) == _generate(LoadedModel(today32, tiny_loaded.tokenizer, tiny_loaded.info), n=16)
    assert Verifier(bf16.model).verify_weights == "same"  # unquantized: nothing to copy


def test_step_is_int4_and_wide_forward_is_bf16_bit_for_bit(int4_same, int4_bf16, bf16):
    """Bit-exact, not within a tolerance: the verify set is the bfloat16 model's own weights fused
    the same way and the step set the int4 model's packed codes, so each forward runs the same
    kernels on the same tensors and shapes as the model it is compared with. All three read and
    write one shared history (`ref`), since KV written by either weight set is what follows."""
    v = Verifier(int4_bf16.model)
    ref_int4, ref_bf16 = Verifier(int4_same.model), Verifier(bf16.model)
    assert (v.verify_weights, v.verify_weights_from) == ("bf16", 2) and v.verify_weights_bytes > 0
    mine, ref = v.new_cache(), ref_int4.new_cache()
    for tokens, keep, expected in ((PROMPT, 3, ref_bf16), ([42], 1, ref_int4), ([7, 8, 9, 10, 11], 5, ref_bf16),
                                   ([12], 1, ref_int4)):
        other = ref_int4 if expected is ref_bf16 else ref_bf16
        probe = ref.clone_prefix(ref.length)  # the other weight set on the same history
        got, want = v.forward(mine, tokens, keep), expected.forward(ref, tokens, keep)  # [keep, V]
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert (got - other.forward(probe, tokens, keep)).abs().max() > 1e-2  # the two sets do differ
        for (ka, va), (kb, vb) in zip(mine.layers(), ref.layers()):
            assert torch.equal(ka, kb) and torch.equal(va, vb)


def _replay(calls: list[list[int]], prompt: list[int], out: list[int], pick: Callable[[int], Verifier]) -> Optional[int]:
    """Recompute every forward the engine ran (`calls`: its input ids, in order) on the verifier
    pick(T) chooses for T tokens, accepting drafts greedily; the position of the first emitted
    token that is not that forward's argmax, or None when all are."""
    full, cache = prompt + out, pick(1).new_cache()
    known = len(prompt)  # tokens decided so far; the cache holds all but the last
    for x in calls:
        u = known - cache.length  # uncached decided tokens; the rest of x are drafts
        assert x[:u] == full[cache.length : known]
        drafts = x[u:]
        pred = pick(len(x)).forward(cache, x, len(x)).argmax(-1).tolist()  # [T]
        a = 0
        while a < len(drafts) and drafts[a] == pred[u - 1 + a]:
            a += 1
        for i, token in enumerate(pred[u - 1 : u + a]):  # the accepted drafts and the one after them
            if known + i < len(full) and token != full[known + i]:
                return known + i
        cache.trim(len(drafts) - a)
        known += a + 1
    assert known >= len(full)
    return None


def test_each_emitted_token_follows_the_weights_that_produced_it(int4_same, int4_bf16, bf16):
    """Greedy ngram speculation under `bf16`: every forward is recomputed, one-token ones on the
    int4 model and wide ones on the bfloat16 model, over one shared KV history. Using either weight
    set for every forward disagrees, so a wrong choice by width in the engine cannot pass."""
    llm = _engine(int4_bf16)
    calls = []  # [T] input ids of each forward the engine runs
    hook = int4_bf16.model.model.embed_tokens.register_forward_hook(lambda m, a, o: calls.append(a[0][0].tolist()))
    try:
        out = llm.generate(REPETITIVE, SamplingParams(max_tokens=40, ignore_eos=True), NGRAM).token_ids
    finally:
        hook.remove()
    assert _generate(int4_bf16) == out  # deterministic
    widths = [len(x) for x in calls[1:]]
    assert 1 in widths and max(widths) > 1  # plain steps and verifies both emitted tokens
    ref_int4, ref_bf16 = Verifier(int4_same.model), Verifier(bf16.model)
    assert _replay(calls, REPETITIVE, out, lambda T: ref_bf16 if T > 1 else ref_int4) is None
    assert _replay(calls, REPETITIVE, out, lambda T: ref_int4) is not None
    assert _replay(calls, REPETITIVE, out, lambda T: ref_bf16) is not None


def test_choose_width_on_pinned_timings():
    """Seconds per forward by rows. The Xeon of issue 12 (int4 step 16 ms, bfloat16 37 ms): int4
    verifies 4/8/16 rows in 1.33/1.96/3.28 steps, bfloat16 in 1.09/1.10/1.16 of its own step."""
    xeon_int4 = {1: 16.0, 4: 16 * 1.33, 8: 16 * 1.96, 16: 16 * 3.28}
    xeon_bf16 = {4: 37 * 1.09, 8: 37 * 1.10, 16: 37 * 1.16}
    assert choose_width(xeon_int4, xeon_bf16) == 16  # 8 rows: 40.7 vs 31.4 ms, bfloat16 loses
    epyc = {1: 10.0, 4: 9.5, 8: 14.5, 16: 23.2}  # this repository's EPYC, bfloat16 ≈ flat but slower
    assert choose_width(epyc, {4: 17.0, 8: 19.2, 16: 23.8}) is None
    assert choose_width(epyc, {4: 1.0, 8: 1.0, 16: 1.0}) == 4
    assert choose_width(epyc, {4: 1.0, 8: 1.0, 16: 30.0}) is None  # only from a width where it keeps winning
    assert choose_width({4: 10.0}, {4: 9.0}) is None and choose_width({4: 10.0}, {4: 8.99}) == 4  # >10%


@pytest.mark.parametrize("margin, expect", [(1.0, "same"), (float("-inf"), "bf16"), (None, None)])
def test_auto_measures_once_and_frees_what_it_does_not_keep(int4_auto, margin, expect):
    """The real tiny model under `auto`: a margin no timing can meet frees the copy, one every timing
    meets keeps it from the narrowest width, the default picks whichever its own timings say."""
    model = copy.deepcopy(int4_auto.model)  # the copy, undecided, comes along
    record = model.verify_copy
    assert record.mode == "auto" and record.timings is None and record.weights
    if margin is not None:
        record.margin = margin
    v = Verifier(model)
    timings = record.timings
    assert set(timings["verify"]) == set(WIDTHS) and set(timings["step"]) == {1, *WIDTHS}
    # the rule written out (not choose_width): the narrowest width from which every measured width
    # verifies more than `margin` faster with the bfloat16 copy
    step, verify = timings["step"], timings["verify"]
    wins = [w for w in WIDTHS if all(verify[x] < (1 - record.margin) * step[x] for x in WIDTHS if x >= w)]
    rule = min(wins) if wins else None
    assert v.verify_weights == (expect or ("same" if rule is None else "bf16"))
    if v.verify_weights == "same":  # nothing left holding the bfloat16 tensors
        assert record.sets is None and record.head is None and not record.weights and v.verify_weights_bytes == 0
        assert all(b.verify is None for b in v.fast.blocks) and v.fast.verify_head is None
    else:
        assert v.verify_weights_from == (4 if margin else rule)
        assert v.verify_weights_bytes > 0
    again = Verifier(model)  # a second verifier on the model reuses the decision
    assert record.timings is timings and again.verify_weights == v.verify_weights


def test_eager_path_keeps_no_copy(int4_auto):
    """The transformers forward computes with the step weights only, so it frees the originals the
    loader kept (212 MB on SmolLM2) instead of holding them unused."""
    model = copy.deepcopy(int4_auto.model)
    v = Verifier(model, fast=False)
    assert v.path == "eager" and v.verify_weights == "same" and v.verify_weights_bytes == 0
    assert model.verify_copy.mode == "same" and not model.verify_copy.weights
