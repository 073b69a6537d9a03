"""One request's KV cache: keys/values written by position into per-layer buffers.

Each layer holds [1, Hkv, capacity, D] tensors; positions [0, length) are valid. A forward
writes its new positions in place, and rollback is trimming: `length -= n`, nothing is copied
(mlx-lm's `trim(n)`, gpt-fast's pointer move). Buffers grow by doubling, so a decode step
allocates nothing. The eager transformers path reads the same buffers through `to_dynamic`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from transformers import DynamicCache, PretrainedConfig

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values of one layer: [B, Hkv, L, D] each
GRANULE = 64  # capacity is a multiple of this many positions


class KVCache:
    def __init__(self, config: PretrainedConfig, layers: Optional[Sequence[KV]] = None):
        self.config = config
        self.keys: list[torch.Tensor] = []    # per layer [1, Hkv, capacity, D]
        self.values: list[torch.Tensor] = []
        self.length = 0  # positions whose keys/values are valid
        self.graph = None  # the fast path's CUDA graph over these buffers (models/graph_step.py)
        if layers:
            self.keys, self.values = [k for k, _ in layers], [v for _, v in layers]
            self.length = self.keys[0].shape[2]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def reserve(self, total: int, like: torch.Tensor) -> None:
        """Make room for `total` positions (dtype and device of `like`); valid positions are kept."""
        if total <= self.capacity:
            return
        cap = -(-max(total, 2 * self.capacity) // GRANULE) * GRANULE
        c = self.config
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        shape = (1, heads, cap, dim)
        old_k, old_v = self.keys, self.values
        self.keys = [like.new_zeros(shape) for _ in range(c.num_hidden_layers)]
        self.values = [like.new_zeros(shape) for _ in range(c.num_hidden_layers)]
        for new, old in zip((*self.keys, *self.values), (*old_k, *old_v)):
            new[:, :, : self.length] = old[:, :, : self.length]

    def append(self, new: Sequence[KV]) -> None:
        """Write per-layer keys/values [1, Hkv, T, D] at the positions after the valid ones."""
        start, T = self.length, new[0][0].shape[2]
        self.reserve(start + T, new[0][0])
        for keys, values, (k, v) in zip(self.keys, self.values, new):
            keys[:, :, start : start + T] = k
            values[:, :, start : start + T] = v
        self.length += T

    def trim(self, n: int) -> int:
        """Forget the last `n` positions; returns how many were actually removed."""
        n = max(0, min(n, self.length))
        self.length -= n
        return n

    def clone_prefix(self, n: int) -> "KVCache":
        """A new cache holding copies of the first `n` positions (this one is left as it is)."""
        return KVCache(self.config, [(k[..., :n, :].clone(), v[..., :n, :].clone()) for k, v in self.layers()])

    def layers(self) -> list[KV]:
        """Per layer views of the valid positions, [1, Hkv, length, D]."""
        return [(k[:, :, : self.length], v[:, :, : self.length]) for k, v in zip(self.keys, self.values)]

    @property
    def nbytes(self) -> int:
        """Bytes held, the spare capacity included."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


def to_dynamic(config: PretrainedConfig, layers: Sequence[KV]) -> DynamicCache:
    """A transformers DynamicCache over the given keys/values, for the eager model's forward."""
    dc = DynamicCache(config=config)
    for layer, (k, v) in zip(dc.layers, layers):
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
    return dc


def stack_left_padded(caches: Sequence[KVCache]) -> tuple[list[KV], torch.Tensor]:
    """Batched keys/values from several caches: row r right-aligned, zeros on the left. Returns the
    layers [B, Hkv, Lmax, D] and the key-padding mask [B, Lmax] (True where a position is real)."""
    lengths = [c.length for c in caches]
    L = max(lengths)
    stacked = []
    for layer in zip(*(c.layers() for c in caches)):
        k0 = layer[0][0]
        keys = k0.new_zeros((len(caches), k0.shape[1], L, k0.shape[3]))  # [B, Hkv, Lmax, D]
        values = keys.clone()
        for r, ((k, v), n) in enumerate(zip(layer, lengths)):
            keys[r, :, L - n :], values[r, :, L - n :] = k[0], v[0]
        stacked.append((keys, values))
    mask = torch.arange(L, device=k0.device)[None, :] >= torch.tensor([L - n for n in lengths], device=k0.device)[:, None]
    return stacked, mask
