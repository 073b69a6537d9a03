"""Aggregate decode throughput with 1, 2, 4, 8 concurrent streams ÷ one stream.

SmolLM2-135M-Instruct, float32, CPU, greedy, plain decoding (speculation off, so the gain is the
batched forward alone). N different chat prompts are submitted at once to one engine; each runs
to `--tokens` tokens (ignore_eos so every stream does the same work). Aggregate tok/s = all
generated tokens / wall time from submission to the last token, prefills included. Every batched
output is compared with the same prompt run alone (recorded, not fatal).

    .venv/bin/python scripts/bench/concurrency.py --tokens 64 --streams 1,2,4,8
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, write_result  # noqa: E402

from inference_engine.config import EngineConfig, ModelConfig  # noqa: E402
from inference_engine.engine.llm import LLM  # noqa: E402
from inference_engine.models import load_model  # noqa: E402
from inference_engine.tokenizer import apply_chat_template  # noqa: E402
from inference_engine.types import SamplingParams, SpeculativeParams, Submission  # noqa: E402

QUESTIONS = [
    "Write a short story about a lighthouse keeper.", "Explain how a bicycle stays upright.",
    "Describe the water cycle for a child.", "What makes a good cup of tea?",
    "Give advice for a first job interview.", "Why is the sky blue?",
    "Describe a walk through a forest in autumn.", "How do bees make honey?",
]


def run(llm: LLM, prompts: list[list[int]], sampling: SamplingParams, spec: SpeculativeParams) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    reqs = [llm.core.add_request(Submission(p, sampling, spec)) for p in prompts]
    while llm.core.has_work:
        llm.core.step()
    return time.perf_counter() - t0, [r.output_ids for r in reqs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--method", default="none", help="speculative method for every stream")
    args = ap.parse_args()
    loaded = load_model(ModelConfig(device="cpu", dtype="float32"))
    llm = LLM(loaded, EngineConfig(max_running=8, max_batch=8, prefix_cache=False))
    sampling, spec = SamplingParams(max_tokens=args.tokens, ignore_eos=True), SpeculativeParams(args.method, 8)
    prompts = [apply_chat_template(loaded.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    run(llm, prompts[:1], SamplingParams(max_tokens=4), spec)  # warm-up
    alone = {}
    rows = []
    for n in [int(x) for x in args.streams.split(",")]:
        wall, outs = run(llm, prompts[:n], sampling, spec)
        for i in range(n):
            if i not in alone:
                alone[i] = outs[i] if n == 1 and i == 0 else run(llm, [prompts[i]], sampling, spec)[1][0]
        rows.append({"streams": n, "wall_s": round(wall, 3), "tokens": n * args.tokens,
                     "aggregate_tok_s": round(n * args.tokens / wall, 2),
                     "equal_to_alone": all(outs[i] == alone[i] for i in range(n))})
        print(rows[-1], flush=True)
    base = rows[0]["aggregate_tok_s"]
    for r in rows:
        r["ratio_vs_one"] = round(r["aggregate_tok_s"] / base, 2)
    result = {"benchmark": "concurrency", "model": loaded.info.name, "env": environment(), "args": vars(args),
              "command": "python scripts/bench/concurrency.py " + " ".join(sys.argv[1:]), "rows": rows}
    print([(r["streams"], r["ratio_vs_one"]) for r in rows])
    print("wrote", write_result("concurrency", result))


if __name__ == "__main__":
    main()
