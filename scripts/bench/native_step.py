"""Issue 24: where the default configuration's step spends its time, per model.

For the model `kakeya serve` would load with the same flags (default: the embedded GGUF on the
native step): the one-token step at several cached lengths and the verify curve t(k)/t(0) there
(`Verifier.forward`, head included); then every linear layer of the model (the decoder's fused
projections and the head) swept in order at M = 1, 4 and 9 rows, with the bytes each sweep reads
per second. Medians; time nothing while another model-heavy process runs.

    .venv/bin/python scripts/bench/native_step.py
    .venv/bin/python scripts/bench/native_step.py --model ~/.cache/kakeya/shapes/1.7B/model-Q4_0.gguf --contexts 128
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, timed, write_result  # noqa: E402

from inference_engine.config import ModelConfig  # noqa: E402
from inference_engine.engine.verifier import Verifier  # noqa: E402
from inference_engine.models import load_model  # noqa: E402


def median_ms(fn, n: int) -> float:
    return timed(fn, n, warmup=1)[0].median * 1e3


def steps(v: Verifier, vocab: int, context: int, ks: list[int], n: int) -> dict:
    cache = v.new_cache()
    v.forward(cache, [(i * 7919) % (vocab - 200) + 100 for i in range(context)], 1)

    def verify(k: int):
        def run():
            v.forward(cache, [100 + i for i in range(k + 1)], k + 1)
            cache.trim(k + 1)  # back to `context`: every timing sees the same length
        return run

    ms = {k: median_ms(verify(k), n) for k in ks}
    return {"context": context, "ms": ms, "ratio": {k: ms[k] / ms[0] for k in ks}}


def sweep(model, rows: list[int], n: int) -> dict:
    layers = [p for b in Verifier(model).fast.blocks for p in (b.qkv, b.o, b.gate_up, b.down)] + [model.get_output_embeddings()]
    nbytes = sum(sum(t.numel() * t.element_size() for t in (*p.buffers(), *p.parameters())) for p in layers)
    out = {"bytes": nbytes, "ms": {}, "gb_s": {}}
    for m in rows:
        xs = {p.in_features: torch.randn(m, p.in_features) for p in layers}
        with torch.inference_mode():
            out["ms"][m] = median_ms(lambda: [p(xs[p.in_features]) for p in layers], n)
        out["gb_s"][m] = nbytes / out["ms"][m] / 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="as `kakeya serve --model` (default: the embedded GGUF)")
    ap.add_argument("--contexts", default="16,300,1000")
    ap.add_argument("--ks", default="0,1,4,8,16")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="native_step")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    loaded = load_model(ModelConfig(model=args.model))
    v = Verifier(loaded.model)
    ks = [int(k) for k in args.ks.split(",")]
    rows = [steps(v, loaded.info.vocab_size, int(c), ks, args.repeats) for c in args.contexts.split(",")]
    for r in rows:
        print(f"{r['context']:>5} cached: " + "  ".join(f"t({k}) {r['ms'][k]:.2f} ms ({r['ratio'][k]:.2f})" for k in ks), flush=True)
    linear = sweep(loaded.model, [1, 4, 9], max(5, args.repeats // 4))
    print(f"linear layers ({linear['bytes'] / 1e6:.0f} MB): " + "  ".join(
        f"M={m} {ms:.1f} ms ({linear['gb_s'][m]:.1f} GB/s)" for m, ms in linear["ms"].items()), flush=True)
    write_result(args.out, {"env": environment(), "argv": sys.argv[1:], "loadavg": [load, os.getloadavg()[0]],
                            "model": loaded.info.name, "weights": loaded.info.quantization, "path": v.path,
                            "steps": rows, "linear": linear})


if __name__ == "__main__":
    main()
