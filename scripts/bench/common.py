"""Shared helpers for benchmarks: timing, DRAM bandwidth, environment, result files."""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).parent / "results"


def dram_bandwidth_gbs(gib: float = 1.0, repeats: int = 5) -> float:
    """Read bandwidth as torch.sum over a `gib` GiB float32 tensor (best of `repeats`)."""
    x = torch.ones(int(gib * (1 << 30)) // 4)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads: parameters and buffers (quantized weights are
    buffers), tied matrices counted once; an input embedding that is not also the lm_head is
    left out, since a step reads one row of it."""
    total = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    table = getattr(emb, "weight", None)  # None: read from the head's own blocks (BlockEmbedding)
    if table is not None and getattr(head, "weight", None) is not table:
        total -= table.numel() * table.element_size()
    return total


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None where the bench extra is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


NO_PLOT = "matplotlib is not installed (pip install -e '.[bench]'); no plot"


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def first_difference(a: list[int], b: list[int]):
    """Index of the first token where two outputs differ (the shorter length if one is a prefix); None if equal."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def environment() -> dict:
    return {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
