"""Verify-width-aware weights (docs/verify_weights.md): one forward of SmolLM2-135M-Instruct,
bfloat16 activations + int4 weights, over `--context` cached tokens, with the step (int4)
weights and with the bfloat16 copy, at 1 row (a plain step) and k+1 rows (a verify of k drafts).
Ratios are to the int4 plain step, the one the engine serves. Then what `--verify-weights auto`
decides on this machine from its own start-up measurement, and what that measurement costs.

Time nothing while another torch process runs on the machine: the load average is recorded.

    .venv/bin/python scripts/bench/verify_weights.py --context 300 --repeats 7
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, weight_bytes, write_result  # noqa: E402

from inference_engine.config import ModelConfig  # noqa: E402
from inference_engine.engine.verifier import Verifier  # noqa: E402
from inference_engine.models import load_model  # noqa: E402
from inference_engine.models.verify_weights import MARGIN, choose_width, measure  # noqa: E402

DRAFTS = (3, 7, 15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", type=int, default=300, help="cached tokens before each timed forward")
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats per shape (median), after one warm-up")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]

    # `bf16` keeps the copy whatever it costs, so both weight sets can be timed in one process
    loaded = load_model(ModelConfig(device="cpu", dtype="bfloat16", quantization="int4", verify_weights="bf16"))
    model = loaded.model
    int4_bytes = weight_bytes(model)  # before the fast path moves the fused int4 weights out of the model
    v = Verifier(model)
    widths = (1, *(k + 1 for k in DRAFTS))
    heads = (model.get_output_embeddings(), v.fast.verify_head)
    t = measure(v.fast.forward, heads, model.config, context=args.context, widths=widths, repeats=args.repeats)
    int4, bf16 = t["step"], t["verify"]  # seconds per forward at w rows
    rows = [{"k": w - 1, "rows": w, "int4_ms": int4[w] * 1e3, "bf16_ms": bf16[w] * 1e3,
             "int4_ratio": int4[w] / int4[1], "bf16_ratio": bf16[w] / int4[1], "bf16_over_int4": bf16[w] / int4[w]}
            for w in widths]
    verify = {w: bf16[w] for w in widths if w > 1}
    same_table = choose_width(int4, verify, MARGIN)  # what auto would pick from these timings

    # what auto's start-up measurement (its defaults: 128 cached tokens, 3 repeats) costs on its own
    t0 = time.perf_counter()
    measure(v.fast.forward, heads, model.config)
    measure_s = time.perf_counter() - t0
    # and what `auto` decides here from it, on a fresh load
    auto_loaded = load_model(ModelConfig(device="cpu", dtype="bfloat16", quantization="int4", verify_weights="auto"))
    auto = Verifier(auto_loaded.model)
    copy = auto_loaded.model.verify_copy

    result = {
        "model": loaded.info.name, "config": "bfloat16+int4", "context": args.context, "repeats": args.repeats,
        "rows": rows,
        "int4_model_bytes": int4_bytes,
        "bf16_copy_bytes": v.verify_weights_bytes,
        "decision_from_this_table": "same" if same_table is None else f"bf16 from {same_table} rows",
        "auto": {"verify_weights": auto.verify_weights, "verify_from": auto.verify_weights_from,
                 "bytes_held": auto.verify_weights_bytes, "measure_s": measure_s,
                 "timings_ms": {k: {w: s * 1e3 for w, s in d.items()} for k, d in (copy.timings or {}).items()}},
        "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
        "environment": environment(),
    }
    print(f"SmolLM2-135M bfloat16+int4, {args.context} cached tokens, median of {args.repeats} "
          f"(load average {load_before:.2f} before, {result['load_average_after']:.2f} after)")
    print(f"{'k':>3} {'rows':>4} {'int4 ms':>8} {'bf16 ms':>8} {'int4/step':>9} {'bf16/step':>9} {'bf16/int4':>9}")
    for r in rows:
        print(f"{r['k']:>3} {r['rows']:>4} {r['int4_ms']:8.2f} {r['bf16_ms']:8.2f} {r['int4_ratio']:9.2f} "
              f"{r['bf16_ratio']:9.2f} {r['bf16_over_int4']:9.2f}")
    print(f"bfloat16 copy: {v.verify_weights_bytes / 1e6:.1f} MB beside {result['int4_model_bytes'] / 1e6:.1f} MB "
          f"of int4 weights; from this table auto would pick {result['decision_from_this_table']}")
    print(f"auto at start-up: {auto.verify_weights} (from {auto.verify_weights_from}), "
          f"holds {auto.verify_weights_bytes / 1e6:.1f} MB; its measurement takes {measure_s:.2f} s")
    print("wrote", write_result("verify_weights", result))


if __name__ == "__main__":
    main()
