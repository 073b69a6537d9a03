"""The fast decode path (models/fast.py) against the transformers forward it replaces: same greedy
tokens in float32, alone, batched, speculating, quantized and compiled; the fused layers against
the layers they fuse."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from inference_engine.cache.kv_cache import KVCache
from inference_engine.config import EngineConfig, ModelConfig
from inference_engine.engine.llm import LLM
from inference_engine.engine.verifier import Verifier
from inference_engine.models import LoadedModel, load_model
from inference_engine.models.quantize import Int4Linear, Int8Linear, effective_weight, fuse, quantize
from inference_engine.types import SamplingParams, SpeculativeParams, Submission

PROMPT = [151644, 872, 198, 9707, 11, 1879, 30, 151645, 198, 151644, 77091, 198]
PLAIN = SpeculativeParams("none", 0)


def _generate(loaded, fast: bool, prompt=PROMPT, n: int = 40, spec=PLAIN, **cfg) -> list[int]:
    llm = LLM(loaded, EngineConfig(fast_path=fast, prefix_cache=False, **cfg))
    assert llm.core.verifier.path == ("eager" if not fast else "compiling" if cfg.get("compile") else "fast")
    return llm.generate(prompt, SamplingParams(max_tokens=n, ignore_eos=True), spec).token_ids


def test_fast_equals_eager_tiny_qwen3(tiny_loaded):
    fast = _generate(tiny_loaded, True, n=64)
    assert fast == _generate(tiny_loaded, False, n=64)
    assert len(set(fast)) > 10


def test_fast_logits_match_eager(tiny_loaded):
    """Prefill, one-token decode and a 5-token verify, each against the transformers forward."""
    fast, eager = Verifier(tiny_loaded.model, fast=True), Verifier(tiny_loaded.model, fast=False)
    assert fast.path == "fast" and eager.path == "eager"
    a, b = fast.new_cache(), eager.new_cache()
    for tokens, keep in ((PROMPT, 3), ([42], 1), ([7, 8, 9, 10, 11], 5)):
        la, lb = fast.forward(a, tokens, keep), eager.forward(b, tokens, keep)
        torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-4)
        assert a.length == b.length
    for (ka, va), (kb, vb) in zip(a.layers(), b.layers()):
        torch.testing.assert_close(ka, kb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-5)


@pytest.mark.real_model
def test_fast_equals_eager_smollm2(smol_float):
    """A trained Llama: the two paths agree token for token in float32."""
    ids = smol_float.tokenizer("The history of the lighthouse begins")["input_ids"]
    assert _generate(smol_float, True, ids, 32) == _generate(smol_float, False, ids, 32)


@pytest.mark.parametrize("fast", [True, False])
def test_batched_rows_equal_alone(tiny_loaded, fast):
    """Rows of one batched forward, at different lengths: on the fast path each attends over its
    own cache; on the eager path the caches are stacked left-padded with a key mask."""
    llm = LLM(tiny_loaded, EngineConfig(prefix_cache=False, fast_path=fast))
    prompts = [PROMPT, PROMPT[:5], PROMPT + [9707, 11, 1879]]
    sp = SamplingParams(max_tokens=24, ignore_eos=True)
    alone = [_generate(tiny_loaded, False, p, 24) for p in prompts]
    reqs = [llm.core.add_request(Submission(p, sp, PLAIN)) for p in prompts]
    forwards = llm.core.verifier.forwards
    while llm.core.has_work:
        llm.core.step()
    assert [r.output_ids for r in reqs] == alone
    assert llm.core.verifier.forwards - forwards < 3 * 24  # decoding rows did share forwards


@pytest.mark.parametrize("method", ["ngram", "suffix"])
def test_fast_speculation_equals_eager_plain(tiny_loaded, method):
    repetitive = PROMPT + [9707, 11, 1879, 30] * 6
    ref = _generate(tiny_loaded, False, repetitive, 40)
    assert _generate(tiny_loaded, True, repetitive, 40, SpeculativeParams(method, 6)) == ref


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_fast_quantized_equals_eager_quantized(tiny_loaded, method):
    model = copy.deepcopy(tiny_loaded.model)
    quantize(model, method)
    loaded = LoadedModel(model, tiny_loaded.tokenizer, tiny_loaded.info)
    assert _generate(loaded, True, n=32) == _generate(loaded, False, n=32)


def test_compiled_step_equals_eager_and_swaps_in(tiny_loaded):
    """`--compile`: the eager fast path serves while the one-token graph compiles in the
    background; once live, it runs every one-token step and picks the same tokens, alone and
    with a batched or speculative step beside it (those stay eager)."""
    llm = LLM(tiny_loaded, EngineConfig(compile=True, prefix_cache=False))
    v = llm.core.verifier
    assert v.path == "compiling"
    sp = SamplingParams(max_tokens=24, ignore_eos=True)
    during = llm.generate(PROMPT, sp, PLAIN).token_ids  # eager while compiling (or just swapped in)
    assert v.fast.step.wait(600) == "compiled" and v.path == "compiled"
    before = v.fast.step.calls
    # 12 prompt + 60 tokens: the cache grows past its first 64 positions, through the last free slot
    after = llm.generate(PROMPT, SamplingParams(max_tokens=60, ignore_eos=True), PLAIN).token_ids
    assert v.fast.step.calls - before >= 59 and v.path == "compiled"  # every decode step ran compiled
    eager = _generate(tiny_loaded, False, n=60)
    assert during == eager[:24] and after == eager
    # the suffix index holds the output above, so this one drafts from it: a longer request then
    # runs past it on compiled one-token steps, between eager verifies
    before = v.fast.step.calls
    long = SamplingParams(max_tokens=80, ignore_eos=True)
    spec = llm.generate(PROMPT, long, SpeculativeParams("suffix", 4))
    assert spec.token_ids == _generate(tiny_loaded, False, n=80)
    assert spec.spec.accepted_tokens > 0 and v.fast.step.calls > before


def test_compiled_step_survives_prefix_hits_and_sessions(tiny_loaded):
    """Issue 24: the compiled step once switched itself off for good at the first prefix-cache hit
    (the prefix's KV copy, made outside inference mode, failed the graph's dispatch-key guard).
    A prefix hit and a second session turn must both run on the compiled step."""
    llm = LLM(tiny_loaded, EngineConfig(compile=True))
    v, sp = llm.core.verifier, SamplingParams(max_tokens=10, ignore_eos=True)
    assert v.fast.step.wait(600) == "compiled"
    first = llm.generate(PROMPT, sp, PLAIN)
    before = v.fast.step.calls
    hit = llm.generate(PROMPT + first.token_ids[:3], sp, PLAIN)  # the prefix cache holds PROMPT + first
    assert hit.usage.cached_tokens >= len(PROMPT) and v.path == "compiled" and v.fast.step.calls - before >= 9
    sid = llm.core.sessions.create().session_id
    turn1 = llm.generate(PROMPT, sp, PLAIN, session_id=sid)
    before = v.fast.step.calls
    turn2 = llm.generate(PROMPT + turn1.token_ids + [198, 9707], sp, PLAIN, session_id=sid)
    assert turn2.usage.cached_tokens >= len(PROMPT) and v.path == "compiled" and v.fast.step.calls - before >= 9
    eager = LLM(tiny_loaded, EngineConfig(fast_path=False, prefix_cache=False))
    assert turn2.token_ids == eager.generate(PROMPT + turn1.token_ids + [198, 9707], sp, PLAIN).token_ids


def test_compiled_step_on_int4_with_verify_weights_auto(tiny_qwen3_dir):
    """bfloat16+int4 under `--verify-weights auto`: the start-up measurement runs forwards before
    the compiled step exists; the compiled step then serves every one-token step. In bfloat16
    inductor computes each fused element-wise chain in float32 and rounds once, where eager rounds
    after every op, so greedy tokens can flip at a random model's near-ties (after how many tokens
    depends on the CPU's kernels): compare one step's hidden states at bfloat16's scale instead."""
    loaded = load_model(ModelConfig(model=str(tiny_qwen3_dir), device="cpu", dtype="bfloat16", quantization="int4",
                                    verify_weights="auto"))
    llm = LLM(loaded, EngineConfig(compile=True, prefix_cache=False))
    fast = llm.core.verifier.fast
    step = fast.step
    assert step.wait(600) == "compiled"
    out = llm.generate(PROMPT, SamplingParams(max_tokens=16, ignore_eos=True), PLAIN).token_ids
    assert len(out) == 16 and step.calls >= 15 and step.state == "compiled"
    cache = KVCache(loaded.model.config)
    with torch.inference_mode():  # as the verifier builds its inputs (the graph's guards see it)
        prompt, nxt = torch.tensor([PROMPT]), torch.tensor([[out[0]]])
    fast.forward(prompt, [cache], [0])
    calls = step.calls
    compiled = fast.forward(nxt, [cache], [len(PROMPT)]).float()  # [1, 1, H]; writes one position only
    assert step.calls == calls + 1, step.state
    fast.step = None  # the same step, eagerly, over the same cache
    eager = fast.forward(nxt, [cache], [len(PROMPT)]).float()
    fast.step = step
    assert not torch.equal(compiled, torch.zeros_like(compiled))
    assert (compiled - eager).norm() <= 0.05 * eager.norm()  # bf16 rounding, not a different function


def test_graph_step_equals_eager(tiny_loaded):
    """The CUDA-graph step (models/graph_step.py) without the capture: the static one-token step
    (position as a tensor, the whole buffer under a mask) replayed per KV buffer, captured again
    when the cache grows; same greedy tokens as the transformers forward, alone and speculating."""
    llm = LLM(tiny_loaded, EngineConfig(cuda_graphs=True, prefix_cache=False))
    v = llm.core.verifier
    assert v.path == "graphs" and v.fast.step is None  # graphs take the place of --compile's graph
    # 12 prompt + 80 tokens: the cache grows from 64 positions to 128, so a second graph is taken
    out = llm.generate(PROMPT, SamplingParams(max_tokens=80, ignore_eos=True), PLAIN).token_ids
    eager = _generate(tiny_loaded, False, n=80)
    assert out == eager and v.fast.graphs.calls >= 79 and v.fast.graphs.captures == 2
    # the suffix index holds that output, so this one drafts from it and every draft passes
    spec = llm.generate(PROMPT, SamplingParams(max_tokens=80, ignore_eos=True), SpeculativeParams("suffix", 4))
    assert spec.token_ids == eager and spec.spec.accepted_tokens > 0
    # n-gram drafts from a repetitive prompt the model does not follow: rejected (the cache rolls
    # back), with graph steps in between
    repetitive = PROMPT + [9707, 11, 1879, 30] * 6
    calls = v.fast.graphs.calls
    spec = llm.generate(repetitive, SamplingParams(max_tokens=40, ignore_eos=True), SpeculativeParams("ngram", 6))
    assert spec.token_ids == _generate(tiny_loaded, False, repetitive, 40)
    assert spec.spec.accepted_tokens < spec.spec.draft_tokens and v.fast.graphs.calls > calls


@pytest.mark.parametrize("bias, dtype", [(False, torch.float32), (True, torch.bfloat16)])
@pytest.mark.parametrize("kind", ["linear", "int8", "int4"])
def test_fuse_keeps_originals_as_views(kind, bias, dtype):
    """Fused == the layers side by side, bit for bit; the originals still compute what they did and
    hold no copy of the weights. Widths 64+16+48 put rows 64 and 80 at the seams, off the packed
    int4 layout's row blocks under AVX2 (32) and AVX-512 (64) alike."""
    torch.manual_seed(0)
    layers = [nn.Linear(64, n, bias=bias).to(dtype) for n in (64, 16, 48)]
    if kind == "int8":
        layers = [Int8Linear(m) for m in layers]
    elif kind == "int4":
        layers = [Int4Linear.from_linear(m) for m in layers]
    x = torch.randn(3, 64, dtype=dtype)
    before = [m(x) for m in layers]
    weights = [effective_weight(m) for m in layers] if kind != "linear" else [m.weight.clone() for m in layers]
    fused = fuse(layers)
    torch.testing.assert_close(fused(x), torch.cat(before, dim=-1), rtol=0, atol=0)
    refused = fuse(layers)  # a second fast path on the same model fuses the fused originals again
    torch.testing.assert_close(refused(x), fused(x), rtol=0, atol=0)
    storages = {}  # every weight of the originals and the fused layer, by storage
    for m, y, w in zip(layers, before, weights):
        torch.testing.assert_close(m(x), y, rtol=0, atol=0)
        assert torch.equal(effective_weight(m) if kind != "linear" else m.weight, w)
        if kind == "int4":  # packed rows cannot be viewed: it computes through the fused layer
            assert m.weight is None and m.scales_and_zeros is None and m.source[0] is refused
        else:  # float and int8 rows can: its weight is a row view
            storages[m.weight.untyped_storage().data_ptr()] = m.weight.untyped_storage().nbytes()
    storages[refused.weight.untyped_storage().data_ptr()] = refused.weight.untyped_storage().nbytes()
    bits = {"linear": torch.finfo(dtype).bits, "int8": 8, "int4": 4}[kind]
    assert sum(storages.values()) == 128 * 64 * bits // 8  # one copy of the weights, no more
    assert fuse([layers[0], nn.Linear(64, 16, bias=not bias).to(dtype)]) is None  # mixed kinds or biases stay apart


def test_unsupported_architecture_falls_back_to_eager(tiny_loaded):
    model = copy.deepcopy(tiny_loaded.model)
    model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
    v = Verifier(model, fast=True)
    assert v.path == "eager" and v.fast is None


def test_cache_grows_by_position_and_trims_by_pointer(tiny_loaded):
    v = Verifier(tiny_loaded.model)
    cache = KVCache(tiny_loaded.model.config)
    v.forward(cache, PROMPT, 1)
    cap, keys = cache.capacity, cache.keys[0]
    assert cache.length == len(PROMPT) and cap >= len(PROMPT) and cap % 64 == 0
    v.forward(cache, [5, 6, 7], 3)
    assert cache.trim(3) == 3 and cache.keys[0] is keys  # no copy, no reallocation
    v.forward(cache, list(range(100, 100 + cap)), 1)  # past the capacity: buffers grow, prefix kept
    assert cache.capacity >= len(PROMPT) + cap and cache.length == len(PROMPT) + cap
