"""Measure the verifier's cost curve t(k)/t(0) on the device in use (cached per model/device/dtype)."""
from __future__ import annotations

from pathlib import Path

from kv_cache_proposer.adaptive import cached_cost_curve, measure_cost_curve

from ..config import EngineConfig
from .verifier import Verifier

CONTEXT = 64  # cached tokens during calibration: a typical short-chat position


def cost_curve(verifier: Verifier, config: EngineConfig) -> list[float]:
    if config.cost_curve is not None:
        return list(config.cost_curve)
    model = verifier.model
    max_k = config.adaptive_max_k
    base = verifier.new_cache()
    verifier.forward(base, [0] * CONTEXT, 1)

    def run(k: int) -> None:
        verifier.forward(base, [0] * (k + 1), k + 1)
        base.trim(k + 1)  # back to CONTEXT: every timing sees the same cache length

    def measure() -> list[float]:
        return measure_cost_curve(run, max_k)

    if config.calibration_file is None:
        return measure()
    key = f"{getattr(model.config, '_name_or_path', '') or type(model).__name__}|{verifier.device}|{model.dtype}|k{max_k}"
    return cached_cost_curve(Path(config.calibration_file), key, measure)
