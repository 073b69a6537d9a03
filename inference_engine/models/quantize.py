"""Weight-only int8 / int4 linear layers on torch's packed CPU kernels (the gpt-fast recipe).

Decoding reads every weight once per token, so it is bound by memory bandwidth: int8 halves the
bytes of bfloat16 and quarters float32; int4 halves them again. Activations stay in the model's
dtype; only weights are quantized:
  int8: per output channel, symmetric: w ≈ q · s, q ∈ [-128, 127]
        (`aten._weight_int8pack_mm`).
  int4: per group of `group_size` input columns, asymmetric: w ≈ q · s + m, q ∈ [0, 15]
        (`aten._weight_int4pack_mm_for_cpu`, which computes (q - 8) · s + z with z = m + 8 · s).
Quantization changes the model: speculative decoding stays lossless relative to the quantized
model actually served (the verifier is the quantized model), not to the float weights.
"""
from __future__ import annotations

import copy
from typing import Mapping, Optional

import torch
from torch import nn

METHODS = ("none", "int8", "int4")


def _restore(layer: nn.Module, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The packed kernels take and give 2-D [M, *]: back to x's leading shape, plus the bias."""
    y = y.reshape(*x.shape[:-1], layer.out_features)
    return y if layer.bias is None else y + layer.bias


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # [N, K]
        scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # [N]
        self.register_buffer("weight", torch.round(w / scales[:, None]).clamp(-128, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.weight, self.scales)  # [M, N]
        return _restore(self, y, x)


class Int4Linear(nn.Module):
    """From codes q ∈ [0, 15] [N, K], scales and minimums [N, K / group_size]: w = q · s + m."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int,
                 bias: Optional[nn.Parameter], dtype: torch.dtype):
        super().__init__()
        N, K = codes.shape
        self.group_size, self.in_features, self.out_features = group_size, K, N
        self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1))
        zeros = mins.float() + 8.0 * scales.float()  # the kernel computes (q - 8) · s + z
        # [G, N, 2]: scale and zero per (group, output channel)
        sz = torch.stack([scales.float(), zeros], dim=-1).transpose(0, 1).contiguous().to(dtype)
        self.register_buffer("scales_and_zeros", sz)
        self.bias = bias

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32) -> "Int4Linear":
        w = linear.weight.detach().float()  # [N, K]
        N, K = w.shape
        groups = w.reshape(N, K // group_size, group_size)
        lo, hi = groups.amin(-1), groups.amax(-1)  # [N, G]
        scales = ((hi - lo) / 15.0).clamp(min=1e-8)
        codes = torch.round((groups - lo[..., None]) / scales[..., None]).clamp(0, 15).reshape(N, K)
        return cls(codes, scales, lo, group_size, linear.bias, linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(-1, x.shape[-1]), self.weight, self.group_size, self.scales_and_zeros
        )  # [M, N]
        return _restore(self, y, x)


@torch.inference_mode()
def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The [N, K] matrix a quantized layer actually multiplies by, read back through its own
    kernel (identity input), so tests compare against what runs, not a re-derivation."""
    eye = torch.eye(layer.in_features, dtype=layer.scales_and_zeros.dtype if hasattr(layer, "scales_and_zeros")
                    else layer.scales.dtype)
    bias, layer.bias = layer.bias, None
    try:
        return layer(eye).T
    finally:
        layer.bias = bias


def quantize(model: nn.Module, method: str, group_size: int = 32, int4_blocks: Mapping[str, tuple] = {}) -> int:
    """Replace the decoder's and lm_head's nn.Linear layers in place; returns how many were replaced.
    The input embedding stays as it is (a lookup reads one row per token); under int4 the lm_head
    gets int8, as llama.cpp keeps the output layer above 4 bits. `int4_blocks` maps a
    layer name to (codes, scales, mins) read from a GGUF file: those layers keep the file's own
    4-bit blocks instead of being requantized from the dequantized float weights."""
    if method not in METHODS:
        raise ValueError(f"quantization must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "none":
        return 0
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in targets:
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        if method == "int8" or name == "lm_head":  # logits are sensitive: the output layer keeps 8 bits
            new = Int8Linear(linear)
        elif name in int4_blocks:
            new = Int4Linear(*int4_blocks[name], 32, linear.bias, linear.weight.dtype)
        else:
            new = Int4Linear.from_linear(linear, group_size)
        setattr(parent, name.rpartition(".")[2], new)
    return len(targets)


def _cat(tensors: list[Optional[torch.Tensor]], dim: int = 0) -> Optional[torch.Tensor]:
    return None if any(t is None for t in tensors) else torch.cat([t.detach() for t in tensors], dim)


def fusable(layers: list[nn.Module]) -> bool:
    kind = type(layers[0])
    return kind in (nn.Linear, Int8Linear, Int4Linear) and all(type(m) is kind for m in layers) \
        and len({m.bias is None for m in layers}) == 1 \
        and (kind is not Int4Linear or len({m.group_size for m in layers}) == 1)


@torch.inference_mode()
def fuse(layers: list[nn.Module]) -> Optional[nn.Module]:
    """One layer computing the given layers' outputs side by side (q/k/v, gate/up): one GEMV reads
    all their weights. The originals' weights become views of the fused one, so no memory is
    duplicated. None when the layers are not all of one fusable kind."""
    if not fusable(layers):
        return None
    kind = type(layers[0])
    fused = copy.copy(layers[0])  # same class and attributes; the tensors are replaced below
    fused._parameters, fused._buffers = dict(fused._parameters), dict(fused._buffers)
    fused.out_features = sum(m.out_features for m in layers)
    weight = _cat([m.weight for m in layers])
    if kind is nn.Linear:
        fused.weight = nn.Parameter(weight, requires_grad=False)
    else:
        fused.weight = weight
    bias = _cat([m.bias for m in layers])
    fused.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
    if kind is Int8Linear:
        fused.scales = _cat([m.scales for m in layers])
    if kind is Int4Linear:  # [G, N, 2]: output channels are dim 1
        fused.scales_and_zeros = _cat([m.scales_and_zeros for m in layers], 1)
    start = 0
    for m in layers:  # packed int4 rows are independent, so row views of the fused weight stay valid
        view = fused.weight[start : start + m.out_features]
        m.weight = nn.Parameter(view, requires_grad=False) if kind is nn.Linear else view
        start += m.out_features
    return fused
