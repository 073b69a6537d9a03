"""Linear layers over ggml's own blocks of 32 weights, computed by the native kernels.

A GGUF file's Q4_1 block is w = d · q + m with q ∈ [0, 15] (Q4_0 is the same with m = −8d), its
Q8_0 block w = d · q with q ∈ [−128, 127]; both are kept exactly as the file stores them (d and
m in float16), so Kakeya multiplies by the very weights llama.cpp does.
The kernel (csrc/native.cpp) computes each output as one fixed chain over K in float32: a row's
result is the same whatever the number of rows, which keeps speculation exact.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import native

BLOCK = 32


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """codes [N, K] in [0, 15] → [N, K/2] uint8 in ggml's order: byte j of a block holds weight j
    in its low nibble and weight j + 16 in its high nibble."""
    N, K = codes.shape
    c = codes.to(torch.uint8).reshape(N, K // BLOCK, BLOCK)
    return (c[..., :16] | (c[..., 16:] << 4)).reshape(N, K // 2)


def _blocks(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(qs, d, m) of float weights w [N, K], codes chosen against the scales as stored (float16)."""
    N, K = w.shape
    groups = w.reshape(N, K // BLOCK, BLOCK)
    if bits == 8:
        d = (groups.abs().amax(-1).clamp(min=1e-12) / 127.0).half().float()  # [N, G]
        return torch.round(groups / d[..., None]).clamp(-128, 127).to(torch.int8).reshape(N, K), d, None
    lo, hi = groups.amin(-1).half().float(), groups.amax(-1)
    d = ((hi - lo) / 15.0).clamp(min=1e-12).half().float()
    codes = torch.round((groups - lo[..., None]) / d[..., None]).clamp(0, 15).reshape(N, K)
    return pack_nibbles(codes), d, lo


class BlockLinear(nn.Module):
    """qs: uint8 [N, K/2] (4-bit) or int8 [N, K] (8-bit); d, m: float16 [N, K/32] (m empty for 8-bit)."""

    def __init__(self, qs: torch.Tensor, d: torch.Tensor, m: Optional[torch.Tensor], bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.bits = 4 if qs.dtype == torch.uint8 else 8
        self.out_features = qs.shape[0]
        self.in_features = qs.shape[1] * (2 if self.bits == 4 else 1)
        self.register_buffer("qs", qs.contiguous())
        self.register_buffer("d", d.half().contiguous())  # float16, as ggml stores block scales
        self.register_buffer("m", (m if m is not None else torch.zeros(0)).half().contiguous())
        self.bias = bias

    @classmethod
    def q4(cls, codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bias=None) -> "BlockLinear":
        return cls(pack_nibbles(codes), d, m, bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 4, rows: int = 8192) -> "BlockLinear":
        """Blocks of 32 from float weights: Q4_1-style (scale and minimum per block) or Q8_0-style,
        `rows` output rows at a time (a 150k-token head in one go held several float copies of it)."""
        parts = [_blocks(linear.weight[i : i + rows].detach().float(), bits) for i in range(0, linear.weight.shape[0], rows)]
        qs, d = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return cls(qs, d, torch.cat([p[2] for p in parts]) if bits == 4 else None, linear.bias)

    @property
    def dtype(self) -> torch.dtype:  # of the activations it takes
        return torch.float32

    def weights(self) -> list[torch.Tensor]:
        """[qs, d, m]: what the native decoder takes."""
        return [self.qs, self.d, self.m]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = native.extension().block_linear(x, self.qs, self.d, self.m).to(x.dtype)
        return y if self.bias is None else y + self.bias

    @staticmethod
    def fuse(layers: list["BlockLinear"]) -> "BlockLinear":
        """One layer with the given layers' output rows side by side; blocks are per row, so this is
        a concatenation, and the originals become views of it (no memory is duplicated)."""
        biases = [m.bias for m in layers]
        bias = None if any(b is None for b in biases) else nn.Parameter(torch.cat(biases), requires_grad=False)
        fused = BlockLinear(torch.cat([m.qs for m in layers]), torch.cat([m.d for m in layers]),
                            torch.cat([m.m for m in layers]) if layers[0].bits == 4 else None, bias)
        start = 0
        for m in layers:
            rows = slice(start, start + m.out_features)
            m.qs, m.d = fused.qs[rows], fused.d[rows]
            if m.bits == 4:
                m.m = fused.m[rows]
            start += m.out_features
        return fused
