"""Cold and warm runs for spec.py: a fresh-engine column, per-mode comparison, result naming.

Cold = a fresh engine for every request, so nothing learned from earlier requests (prefix cache,
suffix index, controller history) helps it; warm = one engine per column across the workloads.
"""
from __future__ import annotations

import time
from typing import Callable

from common import first_difference


class ColdColumn:
    """A column that builds a fresh engine per request from `factory` (one that returns a warm
    column function). spec.run_workload calls prepare() outside its timer, so the tok/s of a
    cold request excludes building the engine; the build time is kept in setup_seconds."""

    def __init__(self, factory: Callable[[], Callable]):
        self.factory = factory
        self.fn: Callable | None = None
        self.setup_seconds = 0.0
        self.engines = 0

    def prepare(self) -> None:
        t0 = time.perf_counter()
        self.fn = None  # drop the last engine before building the next: one fused weight copy at a time
        self.fn = self.factory()
        self.engines += 1
        self.setup_seconds += time.perf_counter() - t0

    def __call__(self, ids, max_tokens):
        if self.fn is None:
            self.prepare()
        fn, self.fn = self.fn, None  # each engine serves exactly one request
        return fn(ids, max_tokens)


def compare(runs: dict, ref: str, name: str) -> None:
    """Ratio vs the reference column and token-for-token equality with it, per column and per request."""
    base = runs[ref]
    for run in runs.values():
        run["ratio"] = run["tok_s"] / base["tok_s"]
        run["mismatches"] = []
        for i, (o, b, rec) in enumerate(zip(run["outputs"], base["outputs"], run["requests"])):
            rec["equal_plain"], rec["first_difference_at"] = o == b, first_difference(o, b)
            if o != b:
                run["mismatches"].append({"workload": name, "request": i, "first_difference_at": rec["first_difference_at"]})


def split_modes(runs: dict, modes: list[str], methods: list[str], hf: list[str]) -> dict:
    """{mode: {column: run}} from one alternating run: our columns are keyed "mode/method"; HF ran
    once and is copied into every mode (later copies marked `shared`, so no target counts them twice;
    their request records are copied so each mode's equality flags stay its own)."""
    out = {}
    for j, mode in enumerate(modes):
        out[mode] = {m: runs[f"{mode}/{m}"] for m in methods}
        for c in hf:
            out[mode][c] = runs[c] if j == 0 else {**runs[c], "shared": True, "requests": [dict(r) for r in runs[c]["requests"]]}
    return out


def result_name(out: str, mode: str, generated: int, committed: bool, dtype: str, quantization: str) -> str:
    """scripts/bench/results/<name>.json: `spec` for today's default run (warm, committed workloads,
    float32), otherwise named by mode and weight format so runs never overwrite each other."""
    if out:
        return out
    plain_fmt = dtype == "float32" and quantization == "none"
    if mode == "warm" and not generated and plain_fmt:
        return "spec"
    name = "spec_" + {"both": "cold_warm"}.get(mode, mode)
    if not plain_fmt:
        name += "_" + {"bfloat16": "bf16", "float32": "fp32"}.get(dtype, dtype) + ("" if quantization == "none" else f"_{quantization}")
    if generated and committed:
        name += "_all"  # generated family plus the committed workloads: a different request set
    elif not generated:
        name += "_committed"
    return name
