"""Seed the verify-cost model: time t(k)/t(0) once on the device in use, cached on disk.

The cache key names everything the curve depends on: model, device, dtype and weight format,
and the machine (CPU model, torch threads, torch version), so a curve measured on one machine
or thread count is never reused on another. It is only a seed: the engine refines it online.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from ..config import EngineConfig
from ..models.device import synchronize
from ..models.gguf_cache import default_cache_dir
from .verifier import Verifier

CONTEXT = 64  # cached tokens during calibration: a typical short-chat position
MAX_CURVES = 64  # curves kept in the shared cache file (model × machine × format × threads)
METHOD = 2  # in the key: curves measured an older way (2: interleaved passes) are measured again


def measure_cost_curve(run: Callable[[int], None], max_k: int, repeats: int = 5) -> list[float]:
    """run(k) does one verify forward with k draft tokens. Returns [1.0, t(1)/t(0), ...],
    made non-decreasing (a longer verify is never cheaper; dips are timing noise). The widths
    are timed in interleaved passes, so a slow spell on a shared machine moves every width
    alike instead of skewing the curve (measured: a sequential sweep once put t(8)/t(0) at 1.5
    where the step's own timing gave 2.1, and `auto` then drafted where it did not pay)."""
    run(max_k)  # warm-up
    samples: list[list[float]] = [[] for _ in range(max_k + 1)]
    for _ in range(repeats):
        for k in range(max_k + 1):
            t0 = time.perf_counter()
            run(k)
            samples[k].append(time.perf_counter() - t0)
    times = [statistics.median(s) for s in samples]
    curve, worst = [], 0.0
    for t in times:
        worst = max(worst, t / times[0])
        curve.append(worst)
    return curve


def cached_cost_curve(path: Path, key: str, measure: Callable[[], list[float]]) -> list[float]:
    """The cost curve for `key` from a JSON cache file, measuring once. The file is shared by every
    server and in-process engine of the user: it is replaced atomically, re-read just before (another
    process may have added a curve meanwhile), and keeps the newest MAX_CURVES keys."""
    data = _read(path)
    if key in data:
        return data[key]
    curve = measure()
    data = {k: v for k, v in _read(path).items() if k != key}
    data = dict(list(data.items())[-(MAX_CURVES - 1):] + [(key, curve)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return curve


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # none yet, or one torn by an older writer
        return {}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def weight_format(model: torch.nn.Module) -> str:
    """dtype, plus the packed kernel class when the linear layers are quantized."""
    kinds = sorted({type(m).__name__ for m in model.modules() if type(m).__name__ in ("Int4Linear", "Int8Linear", "BlockLinear")})
    if "BlockLinear" in kinds:  # a rebuilt native kernel (new source or CPU flags) is a new cost curve
        from ..models import native

        kinds.append(f"native-{native.build_dir().name}")
    return "+".join([str(model.dtype).removeprefix("torch."), *kinds])


def calibration_key(verifier: Verifier, max_k: int) -> str:
    model = verifier.model
    name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    machine = f"{cpu_model()}|threads{torch.get_num_threads()}|torch{torch.__version__}"
    return f"{name}|{verifier.device}|{weight_format(model)}|{machine}|k{max_k}|m{METHOD}"


def cost_curve(verifier: Verifier, config: EngineConfig) -> list[float]:
    if config.cost_curve is not None:
        return list(config.cost_curve)
    max_k = config.adaptive_max_k

    def measure() -> list[float]:  # only where the on-disk cache has no curve: a start then costs no forward
        base = verifier.new_cache()
        verifier.forward(base, [0] * CONTEXT, 1)

        def run(k: int) -> None:
            verifier.forward(base, [0] * (k + 1), k + 1)
            base.trim(k + 1)  # back to CONTEXT: every timing sees the same cache length
            synchronize(verifier.device)

        return measure_cost_curve(run, max_k)

    if config.calibration_file == "":
        return measure()
    path = Path(config.calibration_file) if config.calibration_file else default_cache_dir() / "calibration.json"
    return cached_cost_curve(path, calibration_key(verifier, max_k), measure)  # shared with `kakeya serve`'s
