"""The native CPU step (models/csrc/native.cpp) against references that share no code with it.

- Linear layers: ggml's documented block formats written out in numpy, float64 (Q4_1 w = d·q + m,
  nibble j low / j + 16 high; Q8_0 w = d·q; with AVX512-VNNI the activations are quantized as
  ggml's Q8 blocks, x ≈ dx·round(x / dx), dx = amax / 127, and the integer sums are exact).
- The whole decoder: a numpy forward of the transformers architecture (RMSNorm, rotary, GQA
  attention, SwiGLU), no KV cache, its linear layers through the formula above.
- Row independence, the property speculation's exactness rests on: a row's bits must not
  depend on how many rows share the call (f(x[:1]) == f(x)[:1]), nor a token's on whether it
  was decoded alone, verified among drafts, prefilled with its prompt or batched.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
import torch

from inference_engine.cache.kv_cache import KVCache
from inference_engine.config import EngineConfig, ModelConfig
from inference_engine.engine.llm import LLM
from inference_engine.engine.verifier import Verifier
from inference_engine.models import load_model, native
from inference_engine.models.block_linear import BlockEmbedding, BlockLinear, pack_nibbles
from inference_engine.types import SamplingParams, SpeculativeParams

ext = native.extension()
pytestmark = pytest.mark.skipif(ext is None, reason=f"native kernels unavailable: {native.error()}")


# -- the reference formulas ---------------------------------------------------------------------

def ref_blocks(layer: BlockLinear) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """codes [N, K], d and m [N, K/32] (float64), read from the tiles by hand as csrc/blocks.h
    documents them: per (16-column group, block) a tile of code chunks, then 16 float16 d, then
    (Q4_1) 16 float16 m; chunk j's bytes 4L..4L+3 are column L's weights 4j..4j+3 (8-bit, + 128)
    or, in their low / high nibbles, weights 4j..4j+3 / 16+4j..16+4j+3 (4-bit)."""
    t = layer.tiles.numpy()
    C, G, _ = t.shape
    code = 256 if layer.bits == 4 else 512
    chunks = t[..., :code].reshape(C, G, code // 64, 16, 4).astype(np.int64)  # [C, G, chunk, lane, byte]
    if layer.bits == 4:
        chunks = np.concatenate([chunks & 15, chunks >> 4], axis=2)  # weights 0..15, then 16..31
    else:
        chunks = chunks - 128
    codes = chunks.transpose(0, 3, 1, 2, 4).reshape(C * 16, G * 32)[: layer.out_features]

    def halves(at: int) -> np.ndarray:  # [N, G]
        return t[..., at : at + 32].copy().view(np.float16).transpose(0, 2, 1).reshape(C * 16, G)[: layer.out_features]

    d = halves(code).astype(np.float64)
    m = np.zeros_like(d) if layer.bits == 8 else (-8.0 * d if layer.sym else halves(code + 32).astype(np.float64))
    return codes, d, m


def ref_linear(x: np.ndarray, layer: BlockLinear, weight: Optional[np.ndarray] = None) -> np.ndarray:
    """y [M, N] float64 for x [M, K] float32, as the kernel in use defines it: over the weights
    `weight` [N, K] (float) or, by default, the blocks read from the tiles by hand."""
    if weight is None:
        codes, d, m = ref_blocks(layer)
        N, K = codes.shape
        weight = (codes.reshape(N, -1, 32) * d[..., None] + m[..., None]).reshape(N, K)
    if ext.activations == "f32":
        return x.astype(np.float64) @ weight.astype(np.float64).T
    xb = x.astype(np.float32).reshape(x.shape[0], -1, 32)  # [M, G, 32]
    amax = np.abs(xb).max(-1)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), np.float32(0)).astype(np.float32)
    qx = np.rint((xb * inv[..., None]).astype(np.float32)).astype(np.int64)
    dx = (amax / np.float32(127)).astype(np.float64)  # [M, G]
    w = weight.astype(np.float64).reshape(weight.shape[0], -1, 32)
    return np.einsum("ngj,mgj,mg->mn", w, qx.astype(np.float64), dx)  # Σ_g dx_g · (w_g · qx_g)


FORMATS = ("q4_0", "q4_1", "q8_0")


def random_blocks(N: int, K: int, fmt: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """ggml-layout blocks: qs (nibbles or int8), d and m (None for Q8_0; −8d for Q4_0)."""
    g = torch.Generator().manual_seed(seed)
    G = K // 32
    d = (torch.rand(N, G, generator=g) * 0.05 + 0.001).half()
    if fmt == "q8_0":
        return torch.randint(-128, 128, (N, K), generator=g).to(torch.int8), d, None
    m = -8 * d if fmt == "q4_0" else (-torch.rand(N, G, generator=g) * 0.2).half()
    return pack_nibbles(torch.randint(0, 16, (N, K), generator=g)), d, m


def random_layer(N: int, K: int, fmt: str, seed: int = 0) -> BlockLinear:
    return BlockLinear.from_blocks(*random_blocks(N, K, fmt, seed))


# -- linear layers --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("N,K", [(64, 64), (70, 192), (33, 96)])  # a partial column tile; K = 96: 3 blocks
def test_block_linear_matches_the_ggml_formula(fmt, N, K):
    layer = random_layer(N, K, fmt)
    assert (layer.bits, layer.sym) == {"q4_0": (4, True), "q4_1": (4, False), "q8_0": (8, False)}[fmt]
    x = torch.randn(9, K, generator=torch.Generator().manual_seed(1))
    y = layer(x).numpy().astype(np.float64)
    ref = ref_linear(x.numpy(), layer)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("fmt", FORMATS)
def test_tiles_hold_the_file_s_blocks(fmt):
    """The tiles are a rearrangement: every code, scale and minimum of the ggml blocks is there,
    Q4_0 in its own 18 bytes per 32 weights."""
    qs, d, m = random_blocks(37, 128, fmt, seed=7)
    layer = BlockLinear.from_blocks(qs, d, m)
    codes, rd, rm = ref_blocks(layer)
    want = qs.numpy().astype(np.int64)
    if fmt != "q8_0":
        b = want.reshape(37, -1, 16)
        want = np.concatenate([b & 15, b >> 4], axis=-1).reshape(37, -1)
    assert np.array_equal(codes, want) and np.array_equal(rd, d.double().numpy())
    if fmt != "q8_0":
        assert np.array_equal(rm, m.double().numpy())
    assert layer.tiles.shape == (3, 4, 16 * {"q4_0": 18, "q4_1": 20, "q8_0": 34}[fmt])  # bytes per block of 32


@pytest.mark.parametrize("fmt", FORMATS)
def test_embedding_rows_are_the_blocks_dequantized(fmt):
    """A tied head's rows as token embeddings, bit for bit what transformers' GGUF reader computes
    in float32: d·(q − 8) for Q4_0, d·q + m for Q4_1 (two roundings), d·q for Q8_0."""
    qs, d, m = random_blocks(37, 128, fmt, seed=9)
    ids = torch.tensor([[0, 5], [36, 16]])
    rows = BlockEmbedding(BlockLinear.from_blocks(qs, d, m))(ids)
    q = qs.numpy().astype(np.int64)
    if fmt != "q8_0":
        b = q.reshape(37, -1, 16)
        q = np.concatenate([b & 15, b >> 4], axis=-1).reshape(37, -1)
    df = np.repeat(d.float().numpy(), 32, axis=1)
    if fmt == "q4_0":
        want = df * (q - 8).astype(np.float32)
    elif fmt == "q4_1":
        want = (df * q.astype(np.float32)) + np.repeat(m.float().numpy(), 32, axis=1)
    else:
        want = df * q.astype(np.float32)
    assert rows.shape == (2, 2, 128) and np.array_equal(rows.numpy(), want[ids.numpy()])


def random_q6k(N: int, K: int, seed: int) -> np.ndarray:
    """Q6_K rows [N, K/256·210] of random bytes (any bytes are valid codes and scales), d > 0."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (N, K // 256, 210), dtype=np.uint8)
    blocks[..., 208:210] = (rng.random((N, K // 256, 1)) * 0.002 + 1e-4).astype(np.float16).view(np.uint8)
    return blocks.reshape(N, -1)


def test_a_q6_k_head_computes_gguf_py_s_weights():
    """The Q6_K head llama.cpp's quantizer writes: decoded, tiled and multiplied, against
    gguf-py's own dequantization (the reader transformers uses), and its rows as embeddings
    bit for bit."""
    import gguf

    from inference_engine.models.gguf_blocks import q6k_codes

    raw = random_q6k(37, 512, seed=11)
    weight = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q6_K).reshape(37, 512)  # float32
    layer = BlockLinear.from_q6k(*(torch.from_numpy(a) for a in q6k_codes(raw)))
    assert (layer.bits, layer.in_features, layer.tiles.shape) == (6, 512, (3, 2, 3360))  # 26.25 bytes per 32 weights
    x = torch.randn(9, 512, generator=torch.Generator().manual_seed(12))
    ref = ref_linear(x.numpy(), layer, weight)
    y = layer(x)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert torch.equal(layer(x[4:6]), y[4:6])  # rows independent here too
    ids = torch.tensor([0, 17, 36])
    assert np.array_equal(BlockEmbedding(layer)(ids).numpy(), weight[ids.numpy()])


def test_nibble_order_is_ggml_s():
    """Byte j of a block holds weight j (low nibble) and weight j + 16 (high nibble)."""
    codes = torch.arange(32).remainder(16)[None].repeat(2, 1)  # weights 0..15, 0..15
    codes[1] = torch.tensor([3] * 16 + [12] * 16)
    qs = pack_nibbles(codes)
    assert qs[0].tolist() == [j | (j << 4) for j in range(16)]
    assert qs[1].tolist() == [3 | (12 << 4)] * 16


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_row_is_the_same_however_many_rows_share_the_call(fmt):
    layer = random_layer(132, 256, fmt, seed=3)
    x = torch.randn(17, 256, generator=torch.Generator().manual_seed(4))
    whole = layer(x)
    for rows in (slice(0, 1), slice(0, 2), slice(3, 4), slice(5, 14), slice(8, 17), slice(16, 17)):
        assert torch.equal(layer(x[rows]), whole[rows]), rows


def test_fused_layers_compute_what_the_separate_ones_did():
    parts = [random_layer(n, 128, "q4_1", seed=s) for s, n in enumerate((64, 32, 40))]
    x = torch.randn(3, 128)
    before = torch.cat([p(x) for p in parts], dim=-1)
    assert BlockLinear.fusable(parts) and not BlockLinear.fusable(parts[::-1])  # 40 columns fill no tiles
    fused = BlockLinear.fuse(parts)
    assert torch.equal(fused(x), before)
    assert torch.equal(torch.cat([p(x) for p in parts], dim=-1), before)  # the originals are views now
    assert parts[1].tiles.data_ptr() == fused.tiles[4:].data_ptr()


def test_from_linear_round_trips_within_a_quantum():
    lin = torch.nn.Linear(128, 40, bias=False)
    for bits in (4, 8):
        q = BlockLinear.from_linear(lin, bits)
        codes, d, m = ref_blocks(q)
        w = (codes.reshape(40, -1, 32) * d[..., None] + m[..., None]).reshape(40, 128)
        step = np.repeat(d, 32, axis=1)
        assert np.all(np.abs(w - lin.weight.detach().numpy()) <= 0.51 * step + 1e-7)


# -- the whole decoder ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_gguf(tiny_qwen3_dir):
    """The tiny Qwen3 on the default CPU configuration: blocks (4-bit layers, 8-bit head), native step."""
    loaded = load_model(ModelConfig(model=str(tiny_qwen3_dir), device="cpu", dtype="float32", quantization="gguf"))
    assert loaded.info.quantization == "gguf"
    return loaded


def ref_logits(model, ids: list[int]) -> np.ndarray:
    """Logits [T, V] of the transformers architecture in numpy, every position recomputed."""
    c, inner = model.config, model.model
    Hq, Hkv, D, eps = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rms_norm_eps
    f32 = lambda t: t.detach().float().numpy()  # noqa: E731

    def rms(x, w):
        x32 = x.astype(np.float32)
        return f32(w) * (x32 / np.sqrt((x32.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps)).astype(np.float32)

    T = len(ids)
    inv = 1.0 / (c.rope_parameters["rope_theta"] ** (np.arange(0, D, 2) / D))
    ang = np.arange(T)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))  # [T, D]
    rot = lambda x: x * cos[:, None] + np.concatenate([-x[..., D // 2:], x[..., : D // 2]], -1) * sin[:, None]  # noqa: E731
    x = f32(inner.embed_tokens.weight)[ids]
    for layer in inner.layers:
        a, mlp = layer.self_attn, layer.mlp
        h = rms(x, layer.input_layernorm.weight)
        q = ref_linear(h, a.q_proj).reshape(T, Hq, D)
        k = ref_linear(h, a.k_proj).reshape(T, Hkv, D)
        v = ref_linear(h, a.v_proj).reshape(T, Hkv, D)
        q, k = rot(rms(q, a.q_norm.weight)), rot(rms(k, a.k_norm.weight))
        k, v = np.repeat(k, Hq // Hkv, axis=1), np.repeat(v, Hq // Hkv, axis=1)
        s = np.einsum("thd,uhd->htu", q, k) / np.sqrt(D)
        s = np.where(np.tril(np.ones((T, T), bool))[None], s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        attn = np.einsum("htu,uhd->thd", p / p.sum(-1, keepdims=True), v).reshape(T, Hq * D)
        x = x + ref_linear(attn.astype(np.float32), a.o_proj)
        h = rms(x, layer.post_attention_layernorm.weight)
        g, u = ref_linear(h, mlp.gate_proj), ref_linear(h, mlp.up_proj)
        x = x + ref_linear((g / (1 + np.exp(-g)) * u).astype(np.float32), mlp.down_proj)
    return ref_linear(rms(x, inner.norm.weight), model.lm_head)


PROMPT = [151644, 872, 198, 9707, 11, 1879, 0, 4340, 525, 498, 30, 151645, 198, 151644, 77091, 198]
LONG = PROMPT + PROMPT[3:] + PROMPT[:14]  # 43 positions: keys scored in blocks of 16, and a partial one


@pytest.mark.parametrize("ids", [PROMPT, LONG], ids=["16", "43"])
def test_decoder_matches_the_numpy_reference(tiny_gguf, ids):
    v = Verifier(tiny_gguf.model)
    assert v.path == "native"
    logits = v.forward(v.new_cache(), ids, len(ids)).numpy()
    ref = ref_logits(tiny_gguf.model, ids)
    assert np.abs(logits - ref).max() <= 2e-2 * np.abs(ref).max()
    assert (logits.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_a_token_is_the_same_alone_verified_prefilled_or_batched(tiny_gguf):
    """Hidden states of the same positions, bit for bit: one prefill of the whole prompt, the
    prompt in chunks of 1 and 5 (decode steps and verifies), and batched beside another row."""
    v = Verifier(tiny_gguf.model)
    whole = v.forward(v.new_cache(), LONG, len(LONG))
    for chunk in (1, 5, 17):
        cache, parts = v.new_cache(), []
        for i in range(0, len(LONG), chunk):
            parts.append(v.forward(cache, LONG[i : i + chunk], len(LONG[i : i + chunk])))
        assert torch.equal(torch.cat(parts), whole), chunk
    a, b = v.new_cache(), v.new_cache()
    v.forward(a, LONG[:30], 1)
    v.forward(b, LONG[:3], 1)
    batched = v.forward_batch([a, b], [LONG[30:33], LONG[3:20]], [3, 17])
    assert torch.equal(batched[0], whole[30:33]) and torch.equal(batched[1], whole[3:20])


def test_plain_decoding_is_the_reference_s_argmax(tiny_gguf):
    plain = LLM(tiny_gguf).generate(PROMPT, SamplingParams(max_tokens=12, ignore_eos=True), SpeculativeParams("none", 0))
    ref = [int(ref_logits(tiny_gguf.model, PROMPT + plain.token_ids[:i])[-1].argmax()) for i in (0, 5, 11)]
    assert ref == [plain.token_ids[i] for i in (0, 5, 11)]


# ngram drafts only from repeats: three tokens lifted far above the rest make the model repeat itself
ALPHABET = SamplingParams(max_tokens=40, ignore_eos=True, logit_bias=tuple((t, 30.0) for t in (538, 818, 1195)))


@pytest.mark.parametrize("method,k", [("ngram", 3), ("suffix", 8), ("draft", 4), ("auto", 8)])
def test_default_configuration_speculation_equals_plain(tiny_gguf, method, k):
    """In the fast default configuration, not only in float32: every proposer's greedy output is
    plain decoding's, token for token, with drafts accepted and (but for the draft model, which
    is the verifier itself here) rejected."""
    sp = ALPHABET if method == "ngram" else SamplingParams(max_tokens=40, ignore_eos=True)
    plain = LLM(tiny_gguf).generate(PROMPT, sp, SpeculativeParams("none", 0)).token_ids
    llm = LLM(tiny_gguf, EngineConfig(cost_curve=(1.0,) * 17, prefix_cache=False),
              draft=tiny_gguf if method == "draft" else None)
    if method in ("suffix", "auto"):  # drafts that run right for a while, then wrong: every 6th token off
        llm.core.speculator.suffix_for("").add_sequence(PROMPT + [t if i % 6 != 5 else (t + 1) % 1000 for i, t in enumerate(plain)])
    out = llm.generate(PROMPT, sp, SpeculativeParams(method, k))
    assert out.token_ids == plain
    assert out.spec.accepted_tokens > 0
    if method != "draft":
        assert out.spec.accepted_tokens < out.spec.draft_tokens


def test_kv_is_rolled_back_by_length_only(tiny_gguf):
    """A rejected draft leaves stale keys past `length`; the next step overwrites them by position."""
    v = Verifier(tiny_gguf.model)
    ref = v.forward(v.new_cache(), PROMPT, len(PROMPT))
    cache = v.new_cache()
    v.forward(cache, PROMPT[:8], 1)
    v.forward(cache, [5, 6, 7, 8], 4)  # a draft that is rejected whole
    cache.trim(4)
    assert torch.equal(v.forward(cache, PROMPT[8:], len(PROMPT) - 8), ref[8:])


def test_default_server_configuration_on_a_gguf_is_native(smol_loaded):
    """`kakeya serve` with no flags on the embedded GGUF: its own blocks on the native step."""
    info = smol_loaded.info
    assert (info.quantization, info.dtype) == ("gguf", "float32") and "GGUF" in info.quantization_reason
    assert Verifier(smol_loaded.model).path == "native"
    cache = KVCache(smol_loaded.model.config)
    assert Verifier(smol_loaded.model).forward(cache, [1, 2, 3], 1).shape == (1, smol_loaded.info.vocab_size)


def test_a_gguf_is_built_straight_onto_its_blocks(smol_loaded, smol_float):
    """The default load never holds the decoder's float weights or a float embedding table (peak
    RSS), and computes exactly what quantizing a full float load with the same blocks computes:
    the embedding rows included, which that load took from transformers' own GGUF reader."""
    import copy

    from inference_engine.models.loader import _quantize

    model = smol_loaded.model
    floats = sum(p.numel() for p in model.parameters())
    assert floats < 100_000  # the norms: no linear layer in float, and the embedding is read from the tied head
    assert isinstance(model.get_input_embeddings(), BlockEmbedding)
    full = copy.deepcopy(smol_float.model)
    _quantize(full, ModelConfig(), "gguf", smol_float.info.source)
    ids = smol_loaded.tokenizer("The lighthouse keeper counted the ships")["input_ids"]
    a, b = Verifier(model), Verifier(full)
    assert a.path == b.path == "native"
    assert torch.equal(a.forward(a.new_cache(), ids, len(ids)), b.forward(b.new_cache(), ids, len(ids)))


def test_a_build_killed_midway_does_not_block_the_next_start():
    """torch guards a build with a lock file that a killed build leaves behind, and every later load
    then waits on it forever (seen here: a killed process hung the next `kakeya serve` at start-up)."""
    import subprocess
    import sys

    lock = native.build_dir() / "lock"
    lock.touch()  # what a build killed midway leaves
    r = subprocess.run([sys.executable, "-c", "from inference_engine.models import native; print(native.extension() is not None)"],
                       capture_output=True, text=True, timeout=240)
    assert r.stdout.strip() == "True", r.stderr  # before the fix: the load waited until the timeout
