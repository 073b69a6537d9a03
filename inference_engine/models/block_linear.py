"""Linear layers over ggml's own blocks of 32 weights, computed by the native kernels.

A GGUF file's Q4_1 block is w = d · q + m with q ∈ [0, 15] (Q4_0 is the same with m = −8d), its
Q8_0 block w = d · q with q ∈ [−128, 127]; both are kept exactly as the file stores them (d and
m in float16), so Kakeya multiplies by the very weights llama.cpp does.
The kernel (csrc/blocks.h) computes each output as one fixed chain over the blocks in float32: a
row's result is the same whatever the number of rows, which keeps speculation exact.
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
    """`tiles`: uint8 [ceil(N/16), K/32, bytes], ggml's blocks rearranged with 16 output columns
    side by side (csrc/blocks.h describes the layout); Q4_0 keeps its 18 bytes per 32 weights,
    Q4_1 20, Q8_0 34, Q6_K 26.25. Built from ggml-layout blocks by `from_blocks` / `from_q6k`."""

    TILE_BYTES = {288: (4, True), 320: (4, False), 544: (8, False), 3360: (6, False)}  # → (bits, Q4_0-style)

    def __init__(self, tiles: torch.Tensor, out_features: int, bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.bits, self.sym = self.TILE_BYTES[tiles.shape[2]]
        self.out_features = out_features
        self.in_features = tiles.shape[1] * (256 if self.bits == 6 else BLOCK)  # Q6_K: super-blocks of 256
        self.register_buffer("tiles", tiles.contiguous())
        self.bias = bias

    @classmethod
    def from_blocks(cls, qs: torch.Tensor, d: torch.Tensor, m: Optional[torch.Tensor], bias=None) -> "BlockLinear":
        """qs: uint8 [N, K/2] nibbles (4-bit) or int8 [N, K] (8-bit); d, m: [N, K/32] (m None for
        8-bit), as ggml stores them; Q4_1 blocks whose every m is −8d are kept as Q4_0."""
        m = m if m is not None else torch.zeros(0)
        return cls(native.extension().pack_blocks(qs, d.half(), m.half()), qs.shape[0], bias)

    @classmethod
    def from_q6k(cls, q: torch.Tensor, sc: torch.Tensor, d: torch.Tensor, bias=None) -> "BlockLinear":
        """Q6_K: q int8 [N, K] codes − 32 (∈ [−32, 31]), sc int8 [N, K/16], d [N, K/256]."""
        return cls(native.extension().pack_q6k(q, sc, d.half()), q.shape[0], bias)

    @classmethod
    def q4(cls, codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bias=None) -> "BlockLinear":
        return cls.from_blocks(pack_nibbles(codes), d, m, bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 4, rows: int = 8192) -> "BlockLinear":
        """Blocks of 32 from float weights: Q4_1-style (scale and minimum per block) or Q8_0-style,
        `rows` output rows at a time (a 150k-token head in one go held several float copies of it)."""
        parts = []
        for i in range(0, linear.weight.shape[0], rows):
            qs, d, m = _blocks(linear.weight[i : i + rows].detach().float(), bits)
            parts.append(cls.from_blocks(qs, d, m).tiles)
        return cls(torch.cat(parts), linear.weight.shape[0], linear.bias)

    @property
    def dtype(self) -> torch.dtype:  # of the activations it takes
        return torch.float32

    def weights(self) -> tuple[torch.Tensor, int]:
        """(tiles, N): what the native decoder takes."""
        return self.tiles, self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = native.extension().block_linear(x, self.tiles, self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    @staticmethod
    def fusable(layers: list["BlockLinear"]) -> bool:
        """Tiles concatenate where the formats agree and every part but the last fills its tiles."""
        return len({m.tiles.shape[1:] for m in layers}) == 1 and all(m.out_features % 16 == 0 for m in layers[:-1])

    @staticmethod
    def fuse(layers: list["BlockLinear"]) -> "BlockLinear":
        """One layer with the given layers' output columns side by side: a concatenation of their
        tiles, and the originals become views of it (no memory is duplicated)."""
        biases = [m.bias for m in layers]
        bias = None if any(b is None for b in biases) else nn.Parameter(torch.cat(biases), requires_grad=False)
        fused = BlockLinear(torch.cat([m.tiles for m in layers]), sum(m.out_features for m in layers), bias)
        start = 0
        for m in layers:
            m.tiles = fused.tiles[start : start + m.tiles.shape[0]]
            start += m.tiles.shape[0]
        return fused


class BlockEmbedding(nn.Module):
    """Token embeddings read from a tied head's tiles (a GGUF's `token_embd` serves as both): one
    row per id, dequantized as transformers' GGUF reader does, so the same values as a float
    table without holding one (1.2 GB at Qwen3-1.7B's vocabulary)."""

    def __init__(self, head: BlockLinear):
        super().__init__()
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features
        self.register_buffer("tiles", head.tiles, persistent=False)  # the head's own tensor: no copy

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = native.extension().embed_rows(self.tiles, self.num_embeddings, ids.reshape(-1))
        return rows.reshape(*ids.shape, self.embedding_dim)
