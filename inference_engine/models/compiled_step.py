"""`--compile`: the fast path's one-token step (one row, T = 1) as one compiled graph.

That is the step single-stream decoding runs, and where ~40 small ops per layer make Python and
dispatch a large share of an int4 step (measured: scripts/bench/compiled_step.py). The graph is
compiled in a background thread on a scratch cache while the eager fast path serves, then swapped
in; `state` says which is live. Inductor's on-disk cache (keyed by graph, torch version and CPU)
makes later starts on the same machine much cheaper. Prefill, verify and batched steps stay eager.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

import torch
from transformers import PretrainedConfig

from ..cache.kv_cache import KVCache

log = logging.getLogger(__name__)

# The compiler's stance is process-wide: a compile (another engine's, a draft model's) and a
# compiled call made under "fail_on_recompile" must not overlap. Compiles hold this lock; a call
# that finds it held runs eagerly instead of waiting.
_COMPILER = threading.Lock()


class CompiledStep:
    def __init__(self, step: Callable, embed: torch.nn.Module, rotary: torch.nn.Module, config: PretrainedConfig):
        """`step(ids [1, 1], cos, sin [1, 1, 1, D], keys, values, start) -> hidden [1, 1, H]`."""
        self.state = "compiling"  # → "compiled", or "failed" (the eager fast path keeps serving)
        self.calls = 0  # steps the compiled graph has run
        self._compiled = torch.compile(step, dynamic=True)
        self._live: Optional[Callable] = None
        self._thread = threading.Thread(target=self._warm, args=(embed, rotary, config), name="kakeya-compile",
                                        daemon=True)
        self._thread.start()

    def wait(self, timeout: Optional[float] = None) -> str:
        self._thread.join(timeout)
        return self.state

    def _warm(self, embed, rotary, config) -> None:
        t0 = time.perf_counter()
        try:
            with _COMPILER, torch.inference_mode():
                ids = torch.zeros(1, 1, dtype=torch.long, device=embed.weight.device)
                like = embed(ids)  # [1, 1, H]: the activations' dtype and device
                # several positions and capacities, so the graph is general in both before it serves,
                # and the last free slot (start + 1 == capacity: the attention reads the whole buffer),
                # which dynamo specialises apart
                for capacity, start in ((64, 1), (64, 2), (128, 70), (64, 63), (128, 127)):
                    cache = KVCache(config)
                    cache.reserve(capacity, like)
                    cos, sin = rotary(like, torch.tensor([[start]], device=like.device))  # [1, 1, D]
                    self._compiled(ids, cos[:, None], sin[:, None], cache.keys, cache.values, start)
        except Exception:  # noqa: BLE001 - a compiler failure must not take the engine down
            log.exception("compiling the one-token step failed; the eager fast path keeps serving")
            self.state = "failed"
            return
        self._live, self.state = self._compiled, "compiled"
        log.info("compiled one-token step live after %.1f s", time.perf_counter() - t0)

    def __call__(self, ids, cos, sin, keys, values, start: int) -> Optional[torch.Tensor]:
        """The step's hidden states, or None (not ready, or it would recompile): run eagerly then.
        A one-token step writes only position `start`, so an eager rerun after a refusal is exact."""
        fn = self._live
        if fn is None or not _COMPILER.acquire(blocking=False):
            return None
        try:
            with torch.compiler.set_stance("fail_on_recompile"):  # never stall a request on a compile
                out = fn(ids, cos, sin, keys, values, start)
        except Exception as e:  # noqa: BLE001
            log.warning("compiled step refused this call (%s: %s); eager from now on", type(e).__name__, e)
            self._live, self.state = None, "failed"
            return None
        finally:
            _COMPILER.release()
        self.calls += 1
        return out
