"""CUDA graphs for the fast path's one-token step (one row, T = 1): single-stream decoding.

A graph replays fixed kernels on fixed addresses, so what changes between steps is written into
static input tensors in place: the token id, the rotary row and the position. The step itself is
`FastDecoder.static_token`: KV written with `index_copy_` at a position tensor and attention over
the whole buffer under a mask, so one graph serves every position up to the buffer's capacity.
A graph is captured per KV buffer (the addresses it reads and writes), kept on the KVCache, and
captured again when the cache grows into new buffers (capacity doubles: a handful per request).

Off CUDA the same code runs the static step without a graph ("replay" is a call), which is how
the CPU gate tests everything here but the capture itself; scripts/gpu_check.sh tests that.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..cache.kv_cache import KVCache

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Graph:
    keys: torch.Tensor  # layer 0's key buffer when captured: the cache has not grown while this is it
    ids: torch.Tensor   # [1, 1] the static inputs, written before each replay
    cos: torch.Tensor   # [1, 1, 1, D]
    sin: torch.Tensor
    pos: torch.Tensor   # [1]
    run: Callable[[], torch.Tensor]  # replays, returns the static output [1, 1, H]


class GraphStep:
    def __init__(self, static_token: Callable):
        """`static_token(ids, cos, sin, keys, values, pos) -> hidden [1, 1, H]`, shapes fixed."""
        self.static_token = static_token
        self.state = "graphs"  # or "failed": a capture failed and the eager fast path serves
        self.captures = 0  # graphs captured (one per KV buffer a request decodes in)
        self.calls = 0     # steps replayed

    def __call__(self, ids, cos, sin, cache: KVCache, start: int) -> Optional[torch.Tensor]:
        """The step's hidden states [1, 1, H], or None (graphs failed: run eagerly)."""
        if self.state == "failed":
            return None
        g: Optional[_Graph] = getattr(cache, "graph", None)
        if g is None or g.keys is not cache.keys[0]:
            try:
                g = cache.graph = self._capture(ids, cos, sin, cache, start)
            except Exception:  # noqa: BLE001 - a capture failure must not take the engine down
                log.exception("capturing the one-token CUDA graph failed; the eager fast path serves")
                self.state = "failed"
                return None
        g.ids.copy_(ids)
        g.cos.copy_(cos)
        g.sin.copy_(sin)
        g.pos.fill_(start)
        self.calls += 1
        return g.run().clone()  # the next replay overwrites the static output

    def _capture(self, ids, cos, sin, cache: KVCache, start: int) -> _Graph:
        static = dict(ids=ids.clone(), cos=cos.clone(), sin=sin.clone(),
                      pos=torch.full((1,), start, dtype=torch.long, device=ids.device))
        keys, values = list(cache.keys), list(cache.values)  # bound now, as a graph binds addresses

        def step() -> torch.Tensor:
            return self.static_token(static["ids"], static["cos"], static["sin"], keys, values, static["pos"])

        self.captures += 1
        if ids.device.type != "cuda":
            return _Graph(cache.keys[0], run=step, **static)
        # warm up on a side stream (lazy kernel initialisation must not happen during capture); it
        # writes position `start` with what the replay below writes there again
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads may use CUDA meanwhile
            out = step()

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return _Graph(cache.keys[0], run=replay, **static)
