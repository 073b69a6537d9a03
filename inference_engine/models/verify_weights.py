"""Verify-width-aware weights: quantized weights for one-token steps, bfloat16 for wide forwards.

A one-token step reads every weight once for one row of activations, so the packed int4/int8
kernels win by reading fewer bytes. A verify of k drafts (and a prefill) multiplies k+1 rows:
where the bfloat16 GEMM is nearly flat in the number of rows (oneDNN with AMX) and the packed
kernels are not, bfloat16 weights verify cheaper. Which wins depends on the CPU (on a 2-core
EPYC bfloat16 at 8 rows cost ≈ 6.6× one row), so `auto` measures at start-up and keeps the
bfloat16 copy only where it pays (docs/verify_weights.md).

The copy is the model's own weights before quantization (what --dtype bfloat16 without
--quantization would serve): kept by the loader, fused once by the first fast decoder built on
the model and shared by later ones, freed when `auto` finds it does not pay.
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ..cache.kv_cache import KVCache

log = logging.getLogger(__name__)

MODES = ("auto", "same", "bf16")
WIDTHS = (4, 8, 16)  # rows per request measured by auto: k = 3, 7, 15 drafts plus the last token
MARGIN = 0.10        # auto keeps the copy only where a verify costs >10% less with it


@dataclass
class VerifyCopy:
    """The bfloat16 weights a model keeps for wide forwards, attached to the model by the loader
    (as `model.verify_copy`) so every Verifier built on it finds them without more config."""

    mode: str                                   # bf16 | auto; "same" once auto has freed it
    weights: dict[str, torch.Tensor]            # module name → original weight [N, K], until built
    sets: Optional[list[nn.Module]] = None      # per layer projections (fast.Projections), built once
    head: Optional[nn.Module] = None            # the original lm_head (tied: the embedding itself)
    nbytes: int = 0                             # bytes held beyond the model's own tensors
    verify_from: Optional[int] = None           # rows per request from which the copy is used
    timings: Optional[dict[str, dict[int, float]]] = None  # auto's measurement, seconds
    margin: float = MARGIN

    def release(self) -> None:
        """Drop every reference this record holds, so the bfloat16 tensors are freed."""
        self.mode, self.weights, self.sets, self.head, self.nbytes, self.verify_from = "same", {}, None, None, 0, None


def keep_originals(model: nn.Module, mode: str, device: torch.device, dtype: torch.dtype) -> Optional[VerifyCopy]:
    """Called by the loader just before quantizing: references (no copies) to every nn.Linear's
    weight, which quantization would otherwise drop. None where every mode means `same`: off, not
    on CPU, or activations that are not bfloat16 (in float32 nothing changes)."""
    if mode not in MODES:
        raise ValueError(f"verify weights must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "same" or device.type != "cpu" or dtype != torch.bfloat16:
        if mode == "bf16":
            log.info("--verify-weights bf16 means same here (%s, %s): it applies to bfloat16 on CPU", device, dtype)
        return None
    weights = {name: m.weight.detach() for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    return VerifyCopy(mode, weights)


def extra_bytes(tensors: list[torch.Tensor], model: nn.Module) -> int:
    """Bytes of the storages behind `tensors` that the model's own parameters and buffers do not
    already hold (a tied lm_head is the embedding, so it costs nothing)."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(n for ptr, n in held.items() if ptr not in own)


def choose_width(step: dict[int, float], verify: dict[int, float], margin: float = MARGIN) -> Optional[int]:
    """The fewest rows per request from which the bfloat16 copy verifies cheaper than the step
    weights by more than `margin` at that width and every wider one measured; None: never.
    `step[w]`/`verify[w]`: seconds of one forward over w rows with the step / bfloat16 weights."""
    chosen = None
    for w in sorted(verify, reverse=True):  # from the widest down, while bfloat16 keeps winning
        if verify[w] >= (1.0 - margin) * step[w]:
            break
        chosen = w
    return chosen


@torch.inference_mode()
def measure(forward: Callable, heads: tuple[nn.Module, nn.Module], config, context: int = 128,
            widths: tuple[int, ...] = WIDTHS, repeats: int = 3) -> dict[str, dict[int, float]]:
    """Median seconds of one forward plus its lm_head over `context` cached positions, for one
    row with the step weights and for each width with the step and the bfloat16 weights.
    `forward(ids [1, T], caches, starts, wide)` is the fast decoder's; `heads` = (step, bfloat16)."""
    cache = KVCache(config)
    vocab = int(config.vocab_size)
    forward(torch.arange(context)[None] % vocab, [cache], [0], False)  # the cached context
    cache.length = context

    def once(T: int, wide: bool) -> float:
        ids = (torch.arange(T)[None] * 7 + 11) % vocab  # [1, T]
        times = []
        for _ in range(repeats + 1):  # the first is warm-up (allocation, oneDNN primitive creation)
            t0 = time.perf_counter()
            hidden = forward(ids, [cache], [context], wide)  # writes [context, context+T), length kept
            heads[wide](hidden[0])  # every position's logits, as a verify keeps
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])

    step = {1: once(1, False), **{w: once(w, False) for w in widths}}
    return {"step": step, "verify": {w: once(w, True) for w in widths}}
