"""A lean decoder forward for Llama-family models (Llama, Qwen2, Qwen3), the verifier's fast path.

Same weights and same arithmetic as the transformers model, with less around it: q/k/v and
gate/up are fused into one GEMV each, keys/values are written by position into the request's
KVCache (no concatenation, rollback moves a pointer), a one-token step builds no mask, and the
rotary table is computed once. Rows of a batch attend over their own caches, so no cache is
ever copied to batch it. The transformers forward stays as the reference it is tested against.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from ..cache.kv_cache import KVCache
from . import native
from .block_linear import BlockLinear
from .compiled_step import CompiledStep
from .graph_step import GraphStep
from .quantize import fusable, fuse
from .verify_weights import VerifyCopy, choose_width, extra_bytes, measure

log = logging.getLogger(__name__)

FAMILIES = ("llama", "qwen2", "qwen3")


class Projections(nn.Module):
    """One layer's projections in one weight format: q/k/v and gate/up fused, o and down."""

    def __init__(self, q: nn.Module, k: nn.Module, v: nn.Module, o: nn.Module, gate: nn.Module, up: nn.Module, down: nn.Module):
        super().__init__()
        self.qkv = fuse([q, k, v])  # [H] → [(Hq + 2·Hkv)·D]
        self.o, self.down = o, down
        self.gate_up = fuse([gate, up]) or _Pair(gate, up)  # [H] → [2·I]


class Block(nn.Module):
    """One decoder layer over the fused projections. Its own qkv, o,
    gate_up and down are the step weights; `verify` (verify_weights.py), when set, is a second set
    in bfloat16 that wide forwards use instead."""

    def __init__(self, layer: nn.Module, heads: int, kv_heads: int, head_dim: int, eps: float):
        super().__init__()
        a, m = layer.self_attn, layer.mlp
        step = Projections(a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
        self.qkv, self.o, self.gate_up, self.down = step.qkv, step.o, step.gate_up, step.down
        self.verify: Optional[Projections] = None
        self.ln1, self.ln2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        # Qwen3 normalises each head of q and k
        self.q_norm = getattr(getattr(a, "q_norm", None), "weight", None)
        self.k_norm = getattr(getattr(a, "k_norm", None), "weight", None)
        self.heads, self.kv_heads, self.head_dim, self.eps = heads, kv_heads, head_dim, eps
        self.scale, self.gqa = head_dim**-0.5, heads != kv_heads

    def forward(self, x, cos, sin, keys: list, values: list, starts: list[int], masks: list, causal: list[bool],
                wide: bool = False, slots: Optional[list] = None):
        """x [B, T, H]; keys[b]/values[b] are row b's buffers [1, Hkv, capacity, D] for this layer.
        `wide`: compute with the verify set (a plain bool, so compiled code specialises on it).
        slots[b] [T]: where a windowed cache's row writes (it then attends over the whole buffer
        under masks[b] [T, capacity]); None: written by position, attending to [0, start+T)."""
        B, T, _ = x.shape
        p = self.verify if wide else self  # both carry qkv, o, gate_up and down
        q, k, v = self._qkv(x, cos, sin, p)
        rows = []
        for b, start in enumerate(starts):
            if slots is not None and slots[b] is not None:
                keys[b].index_copy_(2, slots[b], k[b : b + 1])
                values[b].index_copy_(2, slots[b], v[b : b + 1])
                end = keys[b].shape[2]
            else:
                keys[b][:, :, start : start + T] = k[b : b + 1]  # written by position
                values[b][:, :, start : start + T] = v[b : b + 1]
                end = start + T
            rows.append(F.scaled_dot_product_attention(
                q[b : b + 1], keys[b][:, :, :end], values[b][:, :, :end],  # [1, Hkv, end, D]
                attn_mask=masks[b], is_causal=causal[b], scale=self.scale, enable_gqa=self.gqa))
        return self._out(x, rows[0] if B == 1 else torch.cat(rows), p)  # [B, Hq, T, D]

    def static(self, x, cos, sin, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor):
        """One row, one token, every shape fixed (what a CUDA graph can replay): the position is a
        tensor pos [1], and attention reads the whole buffer [1, Hkv, capacity, D] under mask
        [capacity] (True up to pos) instead of a slice that ends at pos."""
        q, k, v = self._qkv(x, cos, sin, self)
        keys.index_copy_(2, pos, k)
        values.index_copy_(2, pos, v)
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale, enable_gqa=self.gqa)
        return self._out(x, attn, self)

    def _qkv(self, x, cos, sin, p):
        """q [B, Hq, T, D], k and v [B, Hkv, T, D], rotated, from x [B, T, H] with weights p."""
        B, T, _ = x.shape
        Hq, Hkv, D = self.heads, self.kv_heads, self.head_dim
        h = _rms(x, self.ln1, self.eps)
        q, k, v = p.qkv(h).view(B, T, Hq + 2 * Hkv, D).split((Hq, Hkv, Hkv), dim=2)  # [B, T, h, D]
        if self.q_norm is not None:
            q, k = _rms(q, self.q_norm, self.eps), _rms(k, self.k_norm, self.eps)
        return _rope(q.transpose(1, 2), cos, sin), _rope(k.transpose(1, 2), cos, sin), v.transpose(1, 2)

    def _out(self, x, attn, p):
        """The residual stream after attention attn [B, Hq, T, D] and the MLP."""
        B, T, _ = x.shape
        x = x + p.o(attn.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))
        gate, up = p.gate_up(_rms(x, self.ln2, self.eps)).chunk(2, dim=-1)  # [B, T, I] each
        return x + p.down(F.silu(gate) * up)


def unsupported_reason(model: PreTrainedModel) -> Optional[str]:
    """Why the fast path cannot run this model (None: it can)."""
    c = model.config
    if c.model_type not in FAMILIES:
        return f"model type {c.model_type!r} (fast path: {', '.join(FAMILIES)})"
    if getattr(c, "hidden_act", "silu") != "silu":
        return f"activation {c.hidden_act!r}"
    if getattr(c, "use_sliding_window", False) or "sliding_attention" in (getattr(c, "layer_types", None) or ()):
        return "sliding-window attention"
    attn = model.model.layers[0].self_attn
    if not fusable([attn.q_proj, attn.k_proj, attn.v_proj]):
        return "q/k/v projections of different kinds"
    return None


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm, op for op (float32 statistics), so float32 results match exactly."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class FastDecoder:
    def __init__(self, model: PreTrainedModel, compile: bool = False, graphs: Optional[bool] = None):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"no fast path for this model: {reason}")
        c, inner = model.config, model.model
        self.heads = c.num_attention_heads
        self.kv_heads = getattr(c, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // self.heads
        self.eps = c.rms_norm_eps
        self.embed, self.norm, self.rotary = inner.embed_tokens, inner.norm.weight, inner.rotary_emb
        self.blocks = [Block(layer, self.heads, self.kv_heads, self.head_dim, self.eps) for layer in inner.layers]
        self._cos = self._sin = None  # [P, D] rotary table, grown on demand
        self.verify_head: Optional[nn.Module] = None  # the lm_head of wide forwards, with verify_from
        self.step: Optional[CompiledStep] = None
        self.graphs: Optional[GraphStep] = None
        self.native = None  # set below; `_verify_weights` may run forwards before
        self.verify_from = self._verify_weights(model)  # rows per request from which `verify` is used
        self.native = _native_decoder(self, model)  # the whole step in one C++ call (GGUF blocks, float32)
        if self.native is not None:
            compile, graphs = False, False  # nothing left for a compiler or a graph to take off the step
        # one-token steps as CUDA graphs: by default on CUDA (elsewhere only when asked: the CPU gate
        # tests the static step that way); they take the place of `--compile`'s graph
        graphs = model.device.type == "cuda" if graphs is None else graphs
        if graphs:
            self.graphs = GraphStep(self.static_token)
        if compile and not graphs:  # after the verify-weights measurement, so that the compile thread does not disturb it
            self.step = CompiledStep(self.one_token, self.embed, self.rotary, c)

    def _verify_weights(self, model: PreTrainedModel) -> Optional[int]:
        """Attach the model's bfloat16 copy (verify_weights.py), building it on first use; under
        `auto` measure once per model whether it pays, and free it if not. None: `same`."""
        record: Optional[VerifyCopy] = getattr(model, "verify_copy", None)
        if record is None or record.mode == "same":
            return None
        if record.sets is None:  # the first fast decoder on this model fuses the originals once
            _build(record, model)
        self._attach(record.sets, record.head)
        if record.mode == "bf16":
            return 2
        if record.timings is None:  # auto, undecided: measure with this decoder, once per model
            heads = (model.get_output_embeddings(), record.head)
            record.timings = measure(self.forward, heads, model.config)
            record.verify_from = choose_width(record.timings["step"], record.timings["verify"], record.margin)
            ms = {k: {w: round(t * 1e3, 2) for w, t in v.items()} for k, v in record.timings.items()}
            log.info("verify weights auto: %s (bfloat16 copy %.1f MB; ms per forward, step weights %s, bfloat16 %s)",
                     "same" if record.verify_from is None else f"bfloat16 from {record.verify_from} rows",
                     record.nbytes / 1e6, ms["step"], ms["verify"])
            if record.verify_from is None:
                record.release()
                self._attach([None] * len(self.blocks), None)
        return record.verify_from

    def _attach(self, sets: list, head: Optional[nn.Module]) -> None:
        for block, verify in zip(self.blocks, sets):
            block.verify = verify
        self.verify_head = head

    def wide(self, T: int) -> bool:
        """Whether a forward of T tokens per row runs on the verify weights."""
        return self.verify_from is not None and T >= self.verify_from

    def _rotary(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, 1, T, D] at positions [B, T], from the model's own rotary module."""
        need = int(positions.max()) + 1
        if self._cos is None or self._cos.shape[0] < need or self._cos.dtype != like.dtype:
            n = max(need, 2 * (0 if self._cos is None else self._cos.shape[0]), 256)
            cos, sin = self.rotary(like, torch.arange(n, device=like.device)[None])
            self._cos, self._sin = cos[0], sin[0]
        return self._cos[positions][:, None], self._sin[positions][:, None]

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, caches: Sequence[KVCache], starts: Sequence[int],
                wide: Optional[bool] = None) -> torch.Tensor:
        """ids [B, T] (right-padded) follow the first starts[b] cached positions of caches[b].
        Writes T positions into each cache (the caller sets each length) and returns the final
        hidden states [B, T, H]. `wide` picks the weight set; None: by T (`self.wide(T)`)."""
        T = ids.shape[1]
        wide = self.wide(T) if wide is None else wide
        x = self.embed(ids)  # [B, T, H]
        offsets = torch.tensor(list(starts), device=ids.device)[:, None]
        cos, sin = self._rotary(offsets + torch.arange(T, device=ids.device)[None, :], x)
        if self.native is not None and all(c.window is None for c in caches):
            return self._native_forward(x, cos, sin, caches, starts)
        masks, slots = [], []
        for cache, start in zip(caches, starts):
            cache.reserve(start + T, x)
            slots.append(None if cache.window is None else cache.place(start, T, ids.device))
            # query t (position start+t) sees keys 0..start+t: one query sees everything cached, a
            # fresh prefill is plain causal (the flash kernel's own mask), otherwise an explicit mask
            if cache.window is None and (T == 1 or start == 0):
                masks.append(None)
                continue
            queries = start + torch.arange(T, device=ids.device)[:, None]  # [T, 1]
            if cache.window is not None:  # keys by the position each slot holds
                masks.append(cache.window.visible(cache.pos[None, :], queries))  # [T, capacity]
            else:
                masks.append(torch.arange(start + T, device=ids.device)[None, :] <= queries)  # [T, start+T]
        if T == 1 and len(caches) == 1 and not wide and caches[0].window is None:
            if self.graphs is not None:
                out = self.graphs(ids, cos, sin, caches[0], starts[0])
            elif self.step is not None:
                out = self.step(ids, cos, sin, caches[0].keys, caches[0].values, starts[0])
            else:
                out = None
            if out is not None:
                return out
        causal = [T > 1 and start == 0 and m is None for start, m in zip(starts, masks)]
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, [c.keys[i] for c in caches], [c.values[i] for c in caches], list(starts), masks, causal,
                      wide, slots)
        return _rms(x, self.norm, self.eps)

    def _native_forward(self, x, cos, sin, caches: Sequence[KVCache], starts: Sequence[int]) -> torch.Tensor:
        """The rest of forward() as one call into csrc/native.cpp: every row, every layer, the final
        norm. x [B, T, H] embedded; cos/sin [B, 1, T, D]."""
        B, T, _ = x.shape
        for cache, start in zip(caches, starts):
            cache.reserve(start + T, x)
        out = self.native.forward(x.reshape(B * T, -1), [c.keys for c in caches], [c.values for c in caches],
                                  list(starts), cos[:, 0], sin[:, 0])
        return out.view(B, T, -1)

    def one_token(self, ids, cos, sin, keys: list, values: list, start: int) -> torch.Tensor:
        """embedding → every block → norm for one row and one token: the graph `--compile` compiles.
        ids [1, 1]; cos/sin [1, 1, 1, D]; keys[i]/values[i] layer i's buffers [1, Hkv, capacity, D]."""
        x = self.embed(ids)  # [1, 1, H]
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, [keys[i]], [values[i]], [start], [None], [False], False)
        return _rms(x, self.norm, self.eps)

    def static_token(self, ids, cos, sin, keys: list, values: list, pos: torch.Tensor) -> torch.Tensor:
        """one_token with every shape fixed, for CUDA graphs (graph_step.py): the position is a
        tensor pos [1] and attention reads each whole buffer [1, Hkv, capacity, D] under a mask."""
        mask = (torch.arange(keys[0].shape[2], device=ids.device) <= pos)[None]  # [1, capacity]
        x = self.embed(ids)  # [1, 1, H]
        for i, block in enumerate(self.blocks):
            x = block.static(x, cos, sin, keys[i], values[i], pos, mask)
        return _rms(x, self.norm, self.eps)


def _native_decoder(fast: FastDecoder, model: PreTrainedModel):
    """csrc/native.cpp's Decoder over this model's blocks, when every projection is a BlockLinear
    and activations are float32 (it computes in float32); None otherwise (the step above serves)."""
    projections = [p for b in fast.blocks for p in (b.qkv, b.o, b.gate_up, b.down)]
    if model.dtype != torch.float32 or not all(isinstance(p, BlockLinear) and p.bias is None for p in projections):
        return None  # the C++ step has no biases (Qwen2's q/k/v): the torch step over the same blocks serves
    ext = native.extension()
    if ext is None:
        return None
    first = fast.blocks[0]
    try:
        dec = ext.Decoder(fast.heads, fast.kv_heads, fast.head_dim, first.gate_up.out_features // 2, fast.eps)
    except RuntimeError as e:  # a shape it does not take (head_dim not a multiple of 16)
        log.info("native step unavailable for this model (%s); the torch step serves", e)
        return None
    for b in fast.blocks:
        norms = [b.ln1, b.ln2] + ([b.q_norm, b.k_norm] if b.q_norm is not None else [])
        dec.add_layer(norms, [b.qkv.weights(), b.o.weights(), b.gate_up.weights(), b.down.weights()])
    dec.set_norm(fast.norm)
    return dec


def _build(record: VerifyCopy, model: PreTrainedModel) -> None:
    """The copy's per-layer Projections and lm_head from the original weights, which are handed
    over (popped), so the separate q/k/v and gate/up tensors are freed once fused."""
    names = {id(m): n for n, m in model.named_modules()}

    def original(m: nn.Module) -> nn.Linear:
        return _linear(record.weights.pop(names[id(m)]), m.bias)

    record.sets = [Projections(*(original(m) for m in (
        layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
        layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj))) for layer in model.model.layers]
    record.head = original(model.get_output_embeddings())
    record.weights = {}  # nothing else is used (these families have no other nn.Linear)
    record.nbytes = extra_bytes([t for p in (*record.sets, record.head) for t in p.parameters()], model)


def _linear(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    """An nn.Linear over an existing weight [N, K] (no copy; built on meta so nothing is allocated)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    layer.bias = bias
    return layer


class _Pair(nn.Module):
    """gate/up that could not be fused (mixed layer kinds): two GEMVs, one output."""

    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.a(x), self.b(x)), dim=-1)
