"""What `auto` costs where drafts fail (issue 12, "cheap failure"): plain vs auto on open-ended
prompts, and where auto's extra time per step goes.

Both columns are warm engines on the same weights; requests alternate plain/auto, each request
`--repeats` times, so drift hits both. Per column: tok/s over all runs (prefill included) and
ms per engine step. For auto, the parts of a step that plain decoding does not have are timed
with perf_counter wrappers on the real engine's bound methods (nothing replaced, only timed):
`propose` (the suffix proposer's shadow draft of one token), the controller's choose_k and
observe, and the cost model's observe. Their sum ÷ auto's step time is the bookkeeping share.

    .venv/bin/python scripts/bench/spec_overhead.py --requests 4 --repeats 3
    .venv/bin/python scripts/bench/spec_overhead.py --dtype bfloat16 --quantization int4
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Stopwatch as Timed, environment, write_result  # noqa: E402
from workloads import generated  # noqa: E402

from inference_engine.config import EngineConfig, ModelConfig  # noqa: E402
from inference_engine.engine.llm import LLM  # noqa: E402
from inference_engine.models import load_model  # noqa: E402
from inference_engine.tokenizer import apply_chat_template  # noqa: E402
from inference_engine.types import SamplingParams, SpeculativeParams  # noqa: E402


def instrument(llm: LLM) -> dict[str, Timed]:
    spec = llm.core.speculator
    spec.controller  # build controller and cost model (calibration) before timing
    parts = {"propose": Timed(spec.propose), "choose_k": Timed(spec.controller.choose_k),
             "controller.observe": Timed(spec.controller.observe), "costs.observe": Timed(spec.costs.observe)}
    spec.propose = parts["propose"]
    spec.controller.choose_k, spec.controller.observe = parts["choose_k"], parts["controller.observe"]
    spec.costs.observe = parts["costs.observe"]
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4, help="generated open-ended prompts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--quantization", choices=("none", "int8", "int4"), default="none")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    loaded = load_model(ModelConfig(device="cpu", dtype=args.dtype, quantization=args.quantization))
    tok = loaded.tokenizer
    reqs = generated.generate(args.requests, args.seed, ("open",), args.max_tokens)[0]["requests"]
    ids = [apply_chat_template(tok, r["messages"]) for r in reqs]
    plain, auto = LLM(loaded, EngineConfig(prefix_cache=False)), LLM(loaded, EngineConfig(prefix_cache=False))
    parts = instrument(auto)
    steps = {"none": Timed(plain.core.step), "auto": Timed(auto.core.step)}
    plain.core.step, auto.core.step = steps["none"], steps["auto"]
    sp = SamplingParams(max_tokens=args.max_tokens)
    specs = {"none": SpeculativeParams("none", 0), "auto": SpeculativeParams("auto", args.k)}
    engines = {"none": plain, "auto": auto}
    warm = apply_chat_template(tok, [{"role": "user", "content": "Say hello."}])
    for m, llm in engines.items():
        llm.generate(warm, SamplingParams(max_tokens=16), specs[m])
    for t in (*parts.values(), *steps.values()):
        t.reset()
    runs = {m: [] for m in engines}
    drafted = accepted = 0
    for r in range(args.repeats):
        for i, p in enumerate(ids):
            for m, llm in engines.items():
                t0 = time.perf_counter()
                res = llm.generate(p, sp, specs[m])
                dt = time.perf_counter() - t0
                runs[m].append({"request": i, "repeat": r, "tokens": len(res.token_ids), "seconds": dt})
                if m == "auto":
                    drafted, accepted = drafted + res.spec.draft_tokens, accepted + res.spec.accepted_tokens
            if runs["none"][-1]["tokens"] != runs["auto"][-1]["tokens"]:
                print(f"request {i}: token counts differ ({runs['none'][-1]['tokens']} vs {runs['auto'][-1]['tokens']})")
    out = {}
    for m, rs in runs.items():
        tokens, seconds = sum(x["tokens"] for x in rs), sum(x["seconds"] for x in rs)
        per_request = [x["tokens"] / x["seconds"] for x in rs]
        out[m] = {"tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds,
                  "median_request_tok_s": statistics.median(per_request),
                  "steps": steps[m].calls, "ms_per_step": 1e3 * steps[m].seconds / max(1, steps[m].calls)}
    step_s = steps["auto"].seconds
    book = {k: {"calls": t.calls, "ms_total": 1e3 * t.seconds, "us_per_call": 1e6 * t.seconds / max(1, t.calls),
                "share_of_auto_step_time": t.seconds / step_s} for k, t in parts.items()}
    ratio = out["auto"]["tok_s"] / out["none"]["tok_s"]
    result = {"env": environment(), "argv": sys.argv[1:], "dtype": args.dtype, "quantization": args.quantization,
              "k": args.k, "seed": args.seed, "prompts": [r["meta"] for r in reqs], "columns": out,
              "auto_vs_plain": ratio, "auto_drafted": drafted, "auto_accepted": accepted,
              "bookkeeping": book, "bookkeeping_share": sum(b["share_of_auto_step_time"] for b in book.values()),
              "runs": runs}
    fmt = args.dtype + ("" if args.quantization == "none" else f"_{args.quantization}")
    path = write_result(args.out or f"spec_overhead_{fmt}", result)
    print(f"plain {out['none']['tok_s']:.2f} tok/s ({out['none']['ms_per_step']:.2f} ms/step), auto "
          f"{out['auto']['tok_s']:.2f} tok/s ({out['auto']['ms_per_step']:.2f} ms/step): auto ÷ plain {ratio:.3f}; "
          f"auto drafted {drafted}, accepted {accepted}")
    for k, b in book.items():
        print(f"  {k:>20}: {b['calls']} calls, {b['us_per_call']:.1f} µs each, {100 * b['share_of_auto_step_time']:.2f}% of auto's step time")
    print(f"  bookkeeping total {100 * result['bookkeeping_share']:.2f}% of auto's step time; wrote {path}")


if __name__ == "__main__":
    main()
