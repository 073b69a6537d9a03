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

import torch
from torch import nn

METHODS = ("none", "int8", "int4")


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
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


class Int4Linear(nn.Module):
    def __init__(self, linear: nn.Linear, group_size: int = 32):
        super().__init__()
        w = linear.weight.detach().float()  # [N, K]
        N, K = w.shape
        groups = w.reshape(N, K // group_size, group_size)
        lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        scales = ((hi - lo) / 15.0).clamp(min=1e-8)  # [N, G, 1]
        q = torch.round((groups - lo) / scales).clamp(0, 15).to(torch.int32).reshape(N, K)
        zeros = lo + 8.0 * scales  # the kernel computes (q - 8) * s + z
        self.group_size = group_size
        self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        # [G, N, 2]: scale and zero per (group, output channel)
        sz = torch.cat([scales, zeros], dim=-1).transpose(0, 1).contiguous().to(linear.weight.dtype)
        self.register_buffer("scales_and_zeros", sz)
        self.bias = linear.bias
        self.in_features, self.out_features = K, N

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(-1, x.shape[-1]), self.weight, self.group_size, self.scales_and_zeros
        )  # [M, N]
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


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


def quantize(model: nn.Module, method: str, group_size: int = 32) -> int:
    """Replace the decoder's and lm_head's nn.Linear layers in place; returns how many were replaced.
    The input embedding stays as it is (a lookup reads one row per token)."""
    if method not in METHODS:
        raise ValueError(f"quantization must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "none":
        return 0
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in targets:
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        new = Int8Linear(linear) if method == "int8" else Int4Linear(linear, group_size)
        setattr(parent, name.rpartition(".")[2], new)
    return len(targets)
