"""One request's KV cache: keys/values written by position into per-layer buffers.

Each layer holds [1, Hkv, capacity, D] tensors; positions [0, length) are valid. A forward
writes its new positions in place, and rollback is trimming: `length -= n`, nothing is copied
(mlx-lm's `trim(n)`, gpt-fast's pointer move). Buffers grow by doubling, so a decode step
allocates nothing. The eager transformers path reads the same buffers through `to_dynamic`.

A windowed cache (`--kv-window SINK,WINDOW`, StreamingLLM-style) keeps the first SINK positions
and a ring of the most recent ones: position p lives in slot p (p < SINK) or SINK + (p − SINK) mod R.
The ring holds WINDOW + T − 1 positions for a forward of T tokens, so a draft never overwrites a
position that plain decoding still attends to, and rollback stays `length -= n`. Each slot records
its absolute position (`pos`); attention masks are built from it (docs/architecture.md, "KV window").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from transformers import DynamicCache, PretrainedConfig

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values of one layer: [B, Hkv, L, D] each
GRANULE = 64  # capacity is a multiple of this many positions


@dataclass(frozen=True, slots=True)
class KVWindow:
    """Attend to the first `sink` positions and the last `window` (the query's own included)."""

    sink: int
    window: int

    def visible(self, pos: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Which keys at positions pos [..., L] (−1: empty slot) queries at positions query [T, 1] see."""
        return (pos >= 0) & (pos <= query) & ((pos < self.sink) | (pos > query - self.window))


class KVCache:
    def __init__(self, config: PretrainedConfig, layers: Optional[Sequence[KV]] = None,
                 window: Optional[KVWindow] = None, headroom: int = 1):
        self.config = config
        self.keys: list[torch.Tensor] = []    # per layer [1, Hkv, capacity, D]
        self.values: list[torch.Tensor] = []
        self.length = 0  # positions cached: the next token's position
        self.graph = None  # the fast path's CUDA graph over these buffers (models/graph_step.py)
        # windowed: slot → absolute position [capacity] (−1 empty); `oldest` the first ring position
        # still held; `headroom` the widest forward (k + 1) the ring keeps room for between steps
        self.window, self.headroom = window, headroom
        self.pos: Optional[torch.Tensor] = None
        self.oldest = window.sink if window else 0
        if layers:
            self.keys, self.values = [k for k, _ in layers], [v for _, v in layers]
            self.length = self.keys[0].shape[2]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def reserve(self, total: int, like: torch.Tensor) -> None:
        """Make room for `total` positions (dtype and device of `like`); valid positions are kept.
        Windowed: room for the forward of total − length tokens, at most SINK + WINDOW + T − 1 slots."""
        if self.window is not None:
            return self._reserve_window(total, like)
        if total <= self.capacity:
            return
        old = self._allocate(self._grown(total), like)
        for new, old in zip((*self.keys, *self.values), old):
            new[:, :, : self.length] = old[:, :, : self.length]

    def _grown(self, need: int) -> int:
        """Capacity for `need` positions: at least double the current one, in whole granules."""
        return -(-max(need, 2 * self.capacity) // GRANULE) * GRANULE

    def _allocate(self, cap: int, like: torch.Tensor) -> list[torch.Tensor]:
        """New zeroed buffers of `cap` positions; returns the old ones (keys, then values)."""
        c = self.config
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        shape = (1, heads, cap, dim)
        old = [*self.keys, *self.values]
        self.keys = [like.new_zeros(shape) for _ in range(c.num_hidden_layers)]
        self.values = [like.new_zeros(shape) for _ in range(c.num_hidden_layers)]
        return old

    # -- windowed caches --------------------------------------------------------

    def _reserve_window(self, total: int, like: torch.Tensor) -> None:
        S, W, T = self.window.sink, self.window.window, total - self.length
        need = min(total, S + W + T - 1)  # everything, until the ring has to wrap
        if need <= self.capacity:
            return
        self._resize(max(need, min(self._grown(need), S + W + self.headroom)), like)

    def _resize(self, cap: int, like: torch.Tensor) -> None:
        """New buffers of `cap` slots; the held positions move to their slots under the new ring."""
        S, old_pos = self.window.sink, self.pos
        old = self._allocate(cap, like)
        self.pos = torch.full((cap,), -1, dtype=torch.long, device=like.device)
        self.oldest = max(self.oldest, self.length - (cap - S))  # what the new ring cannot hold is gone
        if old_pos is not None:
            p = old_pos[(old_pos >= 0) & (old_pos < self.length)]
            held = p[(p < S) | (p >= self.oldest)]
            src, dst = self._slot_of(held, old_pos.numel()), self._slot_of(held, cap)
            for new, buf in zip((*self.keys, *self.values), old):
                new[:, :, dst] = buf[:, :, src]
            self.pos[dst] = held

    def _slot_of(self, positions: torch.Tensor, cap: int) -> torch.Tensor:
        S = self.window.sink
        return torch.where(positions < S, positions, S + (positions - S) % max(1, cap - S))

    def place(self, start: int, T: int, device) -> torch.Tensor:
        """Slots [T] for positions start..start+T−1 of a windowed cache (reserved already); records
        them as held, and the ring positions they overwrite as gone."""
        positions = torch.arange(start, start + T, device=device)
        slots = self._slot_of(positions, self.capacity)
        self.pos[slots] = positions
        self.oldest = max(self.oldest, start + T - (self.capacity - self.window.sink))
        return slots

    def settle(self) -> None:
        """After a step's rollback: give back ring slots beyond WINDOW + headroom (a prefill grew it)."""
        if self.window is None or not self.keys:
            return
        steady = self.window.sink + self.window.window + self.headroom
        if self.capacity > steady:
            self._resize(steady, self.keys[0])

    def append(self, new: Sequence[KV]) -> None:
        """Write per-layer keys/values [1, Hkv, T, D] at the positions after the valid ones."""
        start, T = self.length, new[0][0].shape[2]
        self.reserve(start + T, new[0][0])
        for keys, values, (k, v) in zip(self.keys, self.values, new):
            keys[:, :, start : start + T] = k
            values[:, :, start : start + T] = v
        self.length += T

    def trim(self, n: int) -> int:
        """Forget the last `n` positions; returns how many were actually removed. A windowed cache
        that would have to bring back evicted positions to keep its window forgets everything."""
        n = max(0, min(n, self.length))
        if self.window is not None and self.oldest > self.window.sink and self.length - n - self.oldest < self.window.window - 1:
            n = self.length
        if self.window is not None and n == self.length:
            self.pos, self.oldest, self.keys, self.values = None, self.window.sink, [], []
        self.length -= n
        return n

    @torch.inference_mode()
    def clone_prefix(self, n: int) -> "KVCache":
        """A new cache holding copies of the first `n` positions (this one is left as it is). Made
        in inference mode like every other KV buffer: a compiled step guards on the dispatch keys."""
        return KVCache(self.config, [(k[..., :n, :].clone(), v[..., :n, :].clone()) for k, v in self.layers()])

    def layers(self) -> list[KV]:
        """Per layer views of the valid positions, [1, Hkv, length, D] (full caches only)."""
        assert self.window is None, "a windowed cache's slots are not in position order"
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
