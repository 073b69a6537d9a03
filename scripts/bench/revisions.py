#!/usr/bin/env python
"""The same decode scenario on two revisions of the code, alternating in one run: does a change
(a refactor, say) move plain or `auto` decoding beyond the noise?

Each side is a fresh process (`.venv/bin/python`, the revision's tree first on PYTHONPATH: the
venv's editable install is a meta-path finder after sys.path) with the server's default load
(`ModelConfig()`: the embedded GGUF on the native step), a warm engine without prefix cache, and
the same generated prompts (workloads/generated.py: `--prompts` of each kind), greedy,
plain then `auto` per prompt. Rounds alternate before/after so drift hits both.

    .venv/bin/python scripts/bench/revisions.py 8f0be35            # that commit vs the working tree
    .venv/bin/python scripts/bench/revisions.py A B --rounds 4 --prompts 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_result  # noqa: E402
from workloads import generated  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"

# Run in the revision's tree: only APIs every revision since issue 12 has (LLM.generate's positional form).
SCENARIO = r"""
import json, sys, time
from inference_engine.config import EngineConfig, ModelConfig
from inference_engine.engine.llm import LLM
from inference_engine.models import load_model
from inference_engine.tokenizer import apply_chat_template
from inference_engine.types import SamplingParams, SpeculativeParams
job = json.load(open(sys.argv[1]))
loaded = load_model(ModelConfig())
llm = LLM(loaded, EngineConfig(prefix_cache=False))
sp = SamplingParams(max_tokens=job["max_tokens"])
specs = {"plain": SpeculativeParams("none", 0), "auto": SpeculativeParams("auto", 8)}
llm.generate(apply_chat_template(loaded.tokenizer, [{"role": "user", "content": "Say hello."}]), sp, specs["auto"])
out = []
for messages, prefix in job["prompts"]:
    ids = apply_chat_template(loaded.tokenizer, messages) + loaded.tokenizer.encode(prefix, add_special_tokens=False)
    row = {}
    for name, spec in specs.items():
        t0 = time.perf_counter()
        res = llm.generate(ids, sp, spec)
        row[name] = {"tokens": res.token_ids, "seconds": time.perf_counter() - t0}
    out.append(row)
json.dump(out, open(sys.argv[2], "w"))
"""


def tree(rev: str, scratch: Path) -> Path:
    """A checkout of `rev` (a git worktree, detached); "." is the working tree itself."""
    if rev == ".":
        return ROOT
    path = scratch / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), rev], check=True,
                   capture_output=True)
    return path


def run(src: Path, job: Path, out: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    subprocess.run([str(PYTHON), "-c", SCENARIO, str(job), str(out)], check=True, env=env, cwd=str(src))
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after", nargs="?", default=".")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=2, help="per kind (copy, quote, reformat, summarise, open)")
    ap.add_argument("--seed", type=int, default=2525)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", default="revisions")
    args = ap.parse_args()
    reqs = [r for wl in generated.generate(args.prompts, args.seed, max_tokens=args.max_tokens) for r in wl["requests"]]
    with tempfile.TemporaryDirectory(prefix="kakeya-rev-") as tmp:
        scratch = Path(tmp)
        job = scratch / "job.json"
        job.write_text(json.dumps({"prompts": [(r["messages"], r["prefix"]) for r in reqs], "max_tokens": args.max_tokens}))
        trees = {"before": tree(args.before, scratch), "after": tree(args.after, scratch)}
        runs: dict[str, list] = {"before": [], "after": []}
        try:
            for r in range(args.rounds):
                for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    runs[side].append(run(trees[side], job, scratch / f"{side}{r}.json"))
                    print(f"round {r + 1} {side} done", flush=True)
        finally:
            for side, path in trees.items():
                if path != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)
    summary = {}
    for side, rounds in runs.items():
        summary[side] = {m: [sum(len(p[m]["tokens"]) for p in rnd) / sum(p[m]["seconds"] for p in rnd) for rnd in rounds]
                         for m in ("plain", "auto")}
    same = all(a[m]["tokens"] == b[m]["tokens"] for ra, rb in zip(runs["before"], runs["after"])
               for a, b in zip(ra, rb) for m in ("plain", "auto"))
    result = {"env": environment(), "argv": sys.argv[1:], "before": args.before, "after": args.after,
              "prompts": [r["meta"] for r in reqs], "tok_s": summary, "outputs_equal": same}
    path = write_result(args.out, result)
    for m in ("plain", "auto"):
        b, a = statistics.median(summary["before"][m]), statistics.median(summary["after"][m])
        print(f"{m}: before {b:.1f} tok/s, after {a:.1f} tok/s (after ÷ before {a / b:.3f}; rounds "
              f"{[round(x, 1) for x in summary['before'][m]]} vs {[round(x, 1) for x in summary['after'][m]]})")
    print(f"outputs equal token for token: {same}; wrote {path}")


if __name__ == "__main__":
    main()
