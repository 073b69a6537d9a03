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

from .block_linear import BlockLinear

METHODS = ("none", "int8", "int4")  # torch's packed kernels; "gguf" (block_linear.py) is the loader's


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

    @property
    def dtype(self) -> torch.dtype:  # of the activations it takes
        return self.scales.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.weight, self.scales)  # [M, N]
        return _restore(self, y, x)


class Int4Linear(nn.Module):
    """The packed codes and [G, N, 2] scales and zeros of torch's int4 CPU kernel. After `fuse` a
    layer holds no packed weight of its own: it computes through the fused layer (`source`, its
    first output column), because the packed layout cannot be cut at arbitrary rows."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                 in_features: int, bias: Optional[nn.Parameter]):
        super().__init__()
        self.group_size, self.in_features, self.out_features = group_size, in_features, scales_and_zeros.shape[1]
        self.register_buffer("weight", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.bias = bias
        self.source: Optional[tuple["Int4Linear", int]] = None  # a plain attribute: not a submodule

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int,
                   bias: Optional[nn.Parameter], dtype: torch.dtype) -> "Int4Linear":
        """From codes q ∈ [0, 15] [N, K], scales and minimums [N, K / group_size]: w = q · s + m."""
        zeros = mins.float() + 8.0 * scales.float()  # the kernel computes (q - 8) · s + z
        # [G, N, 2]: scale and zero per (group, output channel)
        sz = torch.stack([scales.float(), zeros], dim=-1).transpose(0, 1).contiguous().to(dtype)
        return cls(_pack(codes), sz, group_size, codes.shape[1], bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32) -> "Int4Linear":
        w = linear.weight.detach().float()  # [N, K]
        N, K = w.shape
        groups = w.reshape(N, K // group_size, group_size)
        lo, hi = groups.amin(-1), groups.amax(-1)  # [N, G]
        scales = ((hi - lo) / 15.0).clamp(min=1e-8)
        codes = torch.round((groups - lo[..., None]) / scales[..., None]).clamp(0, 15).reshape(N, K)
        return cls.from_codes(codes, scales, lo, group_size, linear.bias, linear.weight.dtype)

    @property
    def dtype(self) -> torch.dtype:  # of the activations it takes
        return (self.source[0] if self.source else self).scales_and_zeros.dtype

    def _mm(self, x: torch.Tensor, scales_and_zeros: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[M, K] → this layer's [M, N], through the fused layer's packed weight once fused."""
        src, start = self.source or (self, 0)
        sz = src.scales_and_zeros if scales_and_zeros is None else scales_and_zeros
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, src.weight, self.group_size, sz)
        return y if src is self else y[:, start : start + self.out_features]

    def codes(self) -> torch.Tensor:
        """The 4-bit codes [N, K] as int32, read back exactly through the kernel (identity input,
        scale 1 and zero 8 give (q - 8) · 1 + 8 = q), so nothing assumes the packed layout."""
        src = self.source[0] if self.source else self
        unit = torch.tensor([1.0, 8.0]).expand(self.in_features // self.group_size, src.out_features, 2)
        return self._mm(torch.eye(self.in_features), unit.contiguous()).T.round().to(torch.int32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _restore(self, self._mm(x.reshape(-1, x.shape[-1])), x)


def _pack(codes: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)


def _own_scales_and_zeros(layer: Int4Linear) -> torch.Tensor:
    """[G, N, 2] of this layer's columns; a strided view once fused, fit for copying but not for
    the kernel, which ignores strides."""
    src, start = layer.source or (layer, 0)
    return src.scales_and_zeros[:, start : start + layer.out_features]


@torch.inference_mode()
def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The [N, K] matrix a quantized layer actually multiplies by, read back through its own
    kernel (identity input), so tests compare against what runs, not a re-derivation."""
    eye = torch.eye(layer.in_features, dtype=layer.dtype)
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
            new = Int4Linear.from_codes(*int4_blocks[name], 32, linear.bias, linear.weight.dtype)
        else:
            new = Int4Linear.from_linear(linear, group_size)
        setattr(parent, name.rpartition(".")[2], new)
    return len(targets)


def _cat(tensors: list[Optional[torch.Tensor]], dim: int = 0) -> Optional[torch.Tensor]:
    return None if any(t is None for t in tensors) else torch.cat([t.detach() for t in tensors], dim)


def fusable(layers: list[nn.Module]) -> bool:
    kind = type(layers[0])
    return kind in (nn.Linear, Int8Linear, Int4Linear, BlockLinear) and all(type(m) is kind for m in layers) \
        and len({m.bias is None for m in layers}) == 1 \
        and (kind is not Int4Linear or len({m.group_size for m in layers}) == 1) \
        and (kind is not BlockLinear or BlockLinear.fusable(layers))


@torch.inference_mode()
def fuse(layers: list[nn.Module]) -> Optional[nn.Module]:
    """One layer computing the given layers' outputs side by side (q/k/v, gate/up): one GEMV reads
    all their weights, and no weight memory is duplicated: the originals still work (the eager
    path runs them). None when the layers are not all of one fusable kind. Fused once per model:
    a later fast decoder on the same layers (a fresh engine) gets the same module back, so it
    neither repacks int4 codes nor re-copies float rows."""
    key = tuple(id(m) for m in layers)
    done = getattr(layers[0], "_fused_with", None)  # (key, fused): a tuple, not a registered submodule
    if done is not None and done[0] == key:
        return done[1]
    fused = _fuse(layers)
    if fused is not None:
        layers[0]._fused_with = (key, fused)
    return fused


def _fuse(layers: list[nn.Module]) -> Optional[nn.Module]:
    if not fusable(layers):
        return None
    kind, bias = type(layers[0]), _cat([m.bias for m in layers])
    bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
    if kind is Int4Linear:
        return _fuse_int4(layers, bias)
    if kind is BlockLinear:
        return BlockLinear.fuse(layers)
    fused = copy.copy(layers[0])  # same class and attributes; the tensors are replaced below
    fused._parameters, fused._buffers = dict(fused._parameters), dict(fused._buffers)
    fused.out_features, fused.bias = sum(m.out_features for m in layers), bias
    weight = _cat([m.weight for m in layers])
    fused.weight = nn.Parameter(weight, requires_grad=False) if kind is nn.Linear else weight
    if kind is Int8Linear:
        fused.scales = _cat([m.scales for m in layers])
    start = 0
    for m in layers:  # float and int8 rows are independent: the originals become row views
        view = fused.weight[start : start + m.out_features]
        m.weight = nn.Parameter(view, requires_grad=False) if kind is nn.Linear else view
        if kind is Int8Linear:
            m.scales = fused.scales[start : start + m.out_features]
        start += m.out_features
    return fused


def _fuse_int4(layers: list[Int4Linear], bias: Optional[nn.Parameter]) -> Int4Linear:
    """Fused before packing: the packed layout interleaves rows in blocks as wide as the CPU's
    vectors (64 with AVX-512, 32 with AVX2), so packed tensors cannot be concatenated or sliced
    at arbitrary rows. The codes are concatenated and packed once; scales and zeros are kept as
    they are, so the fused layer computes exactly what the separate ones did."""
    codes = torch.cat([m.codes() for m in layers])
    sz = torch.cat([_own_scales_and_zeros(m) for m in layers], 1)  # [G, N, 2]: output channels are dim 1
    fused = Int4Linear(_pack(codes), sz, layers[0].group_size, layers[0].in_features, bias)
    start = 0
    for m in layers:  # the originals compute through the fused layer and keep their columns
        m.weight, m.scales_and_zeros, m.source = None, None, (fused, start)
        start += m.out_features
    return fused
