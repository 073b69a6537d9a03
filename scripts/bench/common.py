"""The benchmarks' harness: one timing helper, the machine's description, result files and the
markdown they become. Every script in scripts/bench/ is a scenario on it (workloads/ holds the
prompts); it imports nothing from them, so no scenario imports another to reach a helper.

    timed(fn, repeats, warmup)   samples of one call → Timing (median, best, mean)
    alternate(systems, rounds)   the same for several systems side by side, taking turns each round
    Stopwatch(fn)                wraps a bound method in place: its total time and calls
    write_result(name, data)     scripts/bench/results/<name>.json
    table(header, rows)          a markdown table
    update_doc(block, ...)       replace a generated block of docs/benchmarks.md
"""
from __future__ import annotations

import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).parent / "results"
DOC = ROOT / "docs" / "benchmarks.md"


@dataclass
class Timing:
    """Seconds of each timed call."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)


def timed(fn: Callable[[], object], repeats: int, warmup: int = 0) -> tuple[Timing, object]:
    """Call fn `warmup` times untimed, then `repeats` times timed; returns the timing and the last result.
    fn must finish its device work (synchronize) if the timing is to mean anything on an accelerator."""
    out = None
    for _ in range(warmup):
        out = fn()
    t = Timing()
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        t.samples.append(time.perf_counter() - t0)
    return t, out


def alternate(systems: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
              sync: Callable[[], None] = lambda: None) -> tuple[dict[str, Timing], dict[str, object]]:
    """Time several systems side by side: each round calls each once, in turn, so a slow spell on a
    shared machine hits all of them; `warmup` rounds are not timed. `sync` waits for the device
    before and after each call. Returns each system's Timing and its last output."""
    timings, outputs = {name: Timing() for name in systems}, {}
    for r in range(warmup + rounds):
        for name, fn in systems.items():
            sync()
            t0 = time.perf_counter()
            outputs[name] = fn()
            sync()
            if r >= warmup:
                timings[name].samples.append(time.perf_counter() - t0)
    return timings, outputs


class Stopwatch:
    """Wraps one callable: each call runs it and adds its wall time (the real method, only timed)."""

    def __init__(self, fn: Callable):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return self.fn(*a, **kw)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table; cells are written as given (format numbers before)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def update_doc(block: str, begin: str, end: str, heading: str) -> None:
    """Replace the generated block between `begin` and `end` in docs/benchmarks.md (or append it under `heading`)."""
    text = DOC.read_text()
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text += f"\n{heading}\n\n{block}\n"
    DOC.write_text(text)


def git_commit() -> str:
    """HEAD's short hash, marked when the working tree has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (git("rev-parse", "--short", "HEAD") or "unknown") + (" (with uncommitted changes)" if git("status", "--porcelain", "-uno") else "")


def dram_bandwidth_gbs(gib: float = 1.0, repeats: int = 5) -> float:
    """Read bandwidth as torch.sum over a `gib` GiB float32 tensor (best of `repeats`)."""
    x = torch.ones(int(gib * (1 << 30)) // 4)
    return x.numel() * 4 / timed(x.sum, repeats)[0].best / 1e9


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


class Server:
    """`kakeya serve ARGS…` in its own process on a free loopback port (gRPC off), until closed;
    `client` talks to it. Waits (bounded: 5 minutes) for /healthz, failing early if it exits."""

    def __init__(self, *args: str):
        import httpx

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "inference_engine", "serve", "--port", str(self.port), "--grpc-port", "0", *args]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=600)
        for _ in range(600):
            if self.proc.poll() is not None:
                break
            try:
                if self.client.get("/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.close()
        raise RuntimeError("kakeya serve did not become healthy")

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=60)
