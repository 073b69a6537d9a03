"""One request's KV cache: a transformers DynamicCache plus the operations the engine needs.

Rollback is trimming: rejected draft positions are cropped off the end, nothing is copied
(mlx-lm's `trim(n)`, gpt-fast's pointer move).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from transformers import DynamicCache, PretrainedConfig

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values of one layer: [B, H, L, D] each


class KVCache:
    def __init__(self, config: PretrainedConfig, layers: Optional[Sequence[KV]] = None):
        self.config = config
        self.hf = DynamicCache(config=config)
        if layers is not None:
            for layer, (k, v) in zip(self.hf.layers, layers):
                layer.lazy_initialization(k, v)
                layer.keys, layer.values = k, v

    @property
    def length(self) -> int:
        """Number of token positions whose keys/values are cached."""
        return self.hf.get_seq_length()

    def trim(self, n: int) -> int:
        """Forget the last `n` positions; returns how many were actually removed."""
        n = max(0, min(n, self.length))
        if n:
            self.hf.crop(-n)
        return n

    def clone_prefix(self, n: int) -> "KVCache":
        """A new cache holding copies of the first `n` positions (this one is left as it is)."""
        return KVCache(self.config, [(k[..., :n, :].clone(), v[..., :n, :].clone()) for k, v in self.layers()])

    def layers(self) -> list[KV]:
        return [(layer.keys, layer.values) for layer in self.hf.layers]

    @property
    def nbytes(self) -> int:
        total = 0
        for layer in self.hf.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total


def stack_left_padded(caches: Sequence[KVCache]) -> tuple[KVCache, torch.Tensor]:
    """One batched cache from several: row r right-aligned, zeros on the left. Returns the cache and
    the key-padding mask [B, Lmax] (True where a position is real)."""
    lengths = [c.length for c in caches]
    L = max(lengths)
    per_layer = zip(*(c.layers() for c in caches))
    stacked = []
    for layer in per_layer:
        k0 = layer[0][0]
        keys = k0.new_zeros((len(caches), k0.shape[1], L, k0.shape[3]))  # [B, H, Lmax, D]
        values = keys.clone()
        for r, ((k, v), n) in enumerate(zip(layer, lengths)):
            keys[r, :, L - n :], values[r, :, L - n :] = k[0], v[0]
        stacked.append((keys, values))
    mask = torch.arange(L, device=k0.device)[None, :] >= torch.tensor([L - n for n in lengths], device=k0.device)[:, None]
    return KVCache(caches[0].config, stacked), mask


def unstack(batched: KVCache, old_lengths: Sequence[int], new_lengths: Sequence[int]) -> list[KVCache]:
    """Split a batched cache (as built by stack_left_padded, then extended by a forward) back into rows,
    keeping row r's old positions and its first new_lengths[r] new ones."""
    L = max(old_lengths)
    rows = []
    for r, (old, new) in enumerate(zip(old_lengths, new_lengths)):
        kv = [(k[r : r + 1, :, L - old : L + new].clone(), v[r : r + 1, :, L - old : L + new].clone()) for k, v in batched.layers()]
        rows.append(KVCache(batched.config, kv))
    return rows
