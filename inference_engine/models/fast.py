"""A lean decoder forward for Llama-family models (Llama, Qwen2, Qwen3), the verifier's fast path.

Same weights and same arithmetic as the transformers model, with less around it: q/k/v and
gate/up are fused into one GEMV each, keys/values are written by position into the request's
KVCache (no concatenation, rollback moves a pointer), a one-token step builds no mask, and the
rotary table is computed once. Rows of a batch attend over their own caches, so no cache is
ever copied to batch it. The transformers forward stays as the reference it is tested against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from ..cache.kv_cache import KVCache
from .quantize import fusable, fuse

FAMILIES = ("llama", "qwen2", "qwen3")


@dataclass(slots=True)
class Block:
    qkv: nn.Module       # [H] → [(Hq + 2·Hkv)·D]
    o: nn.Module
    gate_up: nn.Module   # [H] → [2·I]
    down: nn.Module
    ln1: torch.Tensor
    ln2: torch.Tensor
    q_norm: Optional[torch.Tensor]  # Qwen3 normalises each head of q and k
    k_norm: Optional[torch.Tensor]


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
    def __init__(self, model: PreTrainedModel, compile: bool = False):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"no fast path for this model: {reason}")
        c, inner = model.config, model.model
        self.heads = c.num_attention_heads
        self.kv_heads = getattr(c, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // self.heads
        self.eps = c.rms_norm_eps
        self.embed, self.norm, self.rotary = inner.embed_tokens, inner.norm.weight, inner.rotary_emb
        self.blocks = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            gate_up = fuse([m.gate_proj, m.up_proj])
            self.blocks.append(Block(
                qkv=fuse([a.q_proj, a.k_proj, a.v_proj]), o=a.o_proj,
                gate_up=gate_up if gate_up is not None else _Pair(m.gate_proj, m.up_proj), down=m.down_proj,
                ln1=layer.input_layernorm.weight, ln2=layer.post_attention_layernorm.weight,
                q_norm=getattr(getattr(a, "q_norm", None), "weight", None),
                k_norm=getattr(getattr(a, "k_norm", None), "weight", None),
            ))
        self._cos = self._sin = None  # [P, D] rotary table, grown on demand
        self.compiled = compile
        # Inductor fuses the norm/rope/residual element-wise ops around the GEMVs; shapes are
        # dynamic so a growing cache does not recompile.
        self._layers = torch.compile(self._run_layers, dynamic=True) if compile else self._run_layers

    def _rotary(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, 1, T, D] at positions [B, T], from the model's own rotary module."""
        need = int(positions.max()) + 1
        if self._cos is None or self._cos.shape[0] < need or self._cos.dtype != like.dtype:
            n = max(need, 2 * (0 if self._cos is None else self._cos.shape[0]), 256)
            cos, sin = self.rotary(like, torch.arange(n, device=like.device)[None])
            self._cos, self._sin = cos[0], sin[0]
        return self._cos[positions][:, None], self._sin[positions][:, None]

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, caches: Sequence[KVCache], starts: Sequence[int]) -> torch.Tensor:
        """ids [B, T] (right-padded) follow the first starts[b] cached positions of caches[b].
        Writes T positions into each cache (the caller sets each length) and returns the final
        hidden states [B, T, H]."""
        T = ids.shape[1]
        x = self.embed(ids)  # [B, T, H]
        offsets = torch.tensor(list(starts), device=ids.device)[:, None]
        cos, sin = self._rotary(offsets + torch.arange(T, device=ids.device)[None, :], x)
        masks = []
        for cache, start in zip(caches, starts):
            cache.reserve(start + T, x)
            # query t (position start+t) sees keys 0..start+t: one query sees everything cached, a
            # fresh prefill is plain causal (the flash kernel's own mask), otherwise an explicit mask
            keys = torch.arange(start + T, device=ids.device)
            masks.append(None if T == 1 or start == 0 else keys[None, :] <= start + torch.arange(T, device=ids.device)[:, None])
        buffers = [(c.keys, c.values) for c in caches]
        return self._layers(x, cos, sin, buffers, list(starts), masks)

    def _run_layers(self, x, cos, sin, buffers: list, starts: list[int], masks: list) -> torch.Tensor:
        """The decoder layers; buffers[b] = (per-layer keys, per-layer values) of row b's cache."""
        B, T, _ = x.shape
        Hq, Hkv, D = self.heads, self.kv_heads, self.head_dim
        for i, blk in enumerate(self.blocks):
            h = _rms(x, blk.ln1, self.eps)
            q, k, v = blk.qkv(h).view(B, T, Hq + 2 * Hkv, D).split((Hq, Hkv, Hkv), dim=2)  # [B, T, h, D]
            if blk.q_norm is not None:
                q, k = _rms(q, blk.q_norm, self.eps), _rms(k, blk.k_norm, self.eps)
            q, k = _rope(q.transpose(1, 2), cos, sin), _rope(k.transpose(1, 2), cos, sin)  # [B, h, T, D]
            v = v.transpose(1, 2)
            rows = []
            for b, ((kb, vb), start) in enumerate(zip(buffers, starts)):
                kb[i][:, :, start : start + T] = k[b : b + 1]  # written by position
                vb[i][:, :, start : start + T] = v[b : b + 1]
                keys, values = kb[i][:, :, : start + T], vb[i][:, :, : start + T]  # [1, Hkv, start+T, D]
                rows.append(F.scaled_dot_product_attention(q[b : b + 1], keys, values, attn_mask=masks[b],
                                                           is_causal=T > 1 and start == 0, scale=D**-0.5,
                                                           enable_gqa=Hq != Hkv))
            attn = rows[0] if B == 1 else torch.cat(rows)  # [B, Hq, T, D]
            x = x + blk.o(attn.transpose(1, 2).reshape(B, T, Hq * D))
            gate, up = blk.gate_up(_rms(x, blk.ln2, self.eps)).chunk(2, dim=-1)  # [B, T, I] each
            x = x + blk.down(F.silu(gate) * up)
        return _rms(x, self.norm, self.eps)


class _Pair(nn.Module):
    """gate/up that could not be fused (mixed layer kinds): two GEMVs, one output."""

    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.a(x), self.b(x)), dim=-1)
