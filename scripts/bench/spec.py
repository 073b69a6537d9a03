"""Speculative decoding on four workloads: Kakeya's proposers vs plain, and HF `generate` (plain, prompt lookup).

SmolLM2-135M-Instruct, float32, CPU, greedy. Workloads (scripts/bench/workloads/, see its README):
open chat, code editing, summarise with quotes, a multi-turn agent session. Each column (our
`none`, each --methods entry, HF plain, HF `prompt_lookup_num_tokens=10`) has its own engine, so
a suffix index is never shared between columns; within a column the workloads and their requests
run in order, so earlier requests populate that column's index. Columns alternate request by
request so drift on a shared VM hits all of them. eos: every column stops at eos naturally (ours
and HF use the same eos ids) or at max_tokens; the eos token counts as generated.

tok/s = generated tokens / wall time over the whole workload, prefill included. Every column's
greedy output must equal our plain output token for token; mismatches are recorded, not fatal.
Overlap of the reference output with its own prompt (what any copy-based proposer can exploit):
`lcs` = longest common token subsequence / output length, `copied` = fraction of output tokens
inside an 8-token span that also occurs in the prompt.

    .venv/bin/python scripts/bench/spec.py --methods none,ngram,suffix,auto --k 8
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, first_difference, write_result  # noqa: E402

from inference_engine.config import EngineConfig, ModelConfig  # noqa: E402
from inference_engine.engine.llm import LLM  # noqa: E402
from inference_engine.models import load_model  # noqa: E402
from inference_engine.tokenizer import apply_chat_template, decode  # noqa: E402
from inference_engine.types import SamplingParams, SpecStats, SpeculativeParams  # noqa: E402

WORKLOADS = Path(__file__).parent / "workloads"
HF_PLAIN, HF_LOOKUP = "hf", "hf-lookup"


def load_workload(name: str) -> dict:
    """A workload JSON; `{{file:NAME}}` in a message is replaced by workloads/NAME."""
    text = (WORKLOADS / f"{name}.json").read_text()
    wl = json.loads(text)
    for req in wl["requests"]:
        for msg in req["messages"]:
            msg["content"] = re.sub(r"\{\{file:([\w.]+)\}\}", lambda m: (WORKLOADS / m[1]).read_text(), msg["content"])
    return {"name": name, **wl}


def make_column(loaded, name: str, k: int):
    """A function (prompt_ids, max_tokens) -> (output ids, SpecStats or None) with its own state."""
    if name in (HF_PLAIN, HF_LOOKUP):
        gen_cfg = copy.deepcopy(loaded.model.generation_config)
        gen_cfg.eos_token_id = list(loaded.info.eos_ids)  # the same stop ids as our engine
        gen_cfg.do_sample, gen_cfg.temperature, gen_cfg.top_p, gen_cfg.top_k = False, None, None, None
        gen_cfg.pad_token_id = 0
        gen_cfg.prompt_lookup_num_tokens = 10 if name == HF_LOOKUP else None

        @torch.inference_mode()
        def hf(ids, max_tokens):
            cfg = copy.copy(gen_cfg)
            cfg.max_new_tokens = max_tokens
            inputs = torch.tensor([ids])
            out = loaded.model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=cfg)
            return out[0, len(ids):].tolist(), None
        return hf

    llm = LLM(loaded, EngineConfig())
    if name == "auto":
        llm.core.controller  # calibrate the verify-cost curve now, outside the timed runs
    spec = SpeculativeParams(name, 0 if name == "none" else k)

    def ours(ids, max_tokens):
        res = llm.generate(ids, SamplingParams(max_tokens=max_tokens), spec)
        return res.token_ids, res.spec
    return ours


def prompts(tok, wl: dict, outputs: list[list[int]]):
    """Yield each request's prompt ids; in a conversation, earlier turns and this column's answers accumulate."""
    history: list[dict] = []
    for i, req in enumerate(wl["requests"]):
        prefix = req.get("prefix", "")
        if wl["conversation"]:
            if i:
                prev = wl["requests"][i - 1].get("prefix", "")
                history.append({"role": "assistant", "content": prev + decode(tok, outputs[i - 1])})
            history += req["messages"]
            messages = history
        else:
            messages = req["messages"]
        yield apply_chat_template(tok, messages) + tok.encode(prefix, add_special_tokens=False)


def run_workload(tok, wl: dict, columns: dict, max_tokens: int = 0) -> dict:
    """All columns over one workload, alternating request by request; each column keeps its own history."""
    runs = {c: {"outputs": [], "prompt_ids": [], "seconds": 0.0, "stats": None} for c in columns}
    turns = {c: prompts(tok, wl, runs[c]["outputs"]) for c in columns}
    for _ in wl["requests"]:
        for c, column in columns.items():
            run, ids = runs[c], next(turns[c])
            t0 = time.perf_counter()
            out, spec = column(ids, max_tokens or wl["max_tokens"])
            run["seconds"] += time.perf_counter() - t0
            run["outputs"].append(out)
            run["prompt_ids"].append(ids)
            if spec is not None:
                run["stats"] = run["stats"] or SpecStats()
                run["stats"].add(spec)
    for run in runs.values():
        run["tokens"] = sum(map(len, run["outputs"]))
        run["tok_s"] = run["tokens"] / run["seconds"]
        run.update(spec_summary(run.pop("stats")))
    return runs


def spec_summary(stats: SpecStats | None) -> dict:
    """Acceptance numbers for our columns; None for HF, which does not report them."""
    if stats is None:
        return {"acceptance_rate": None, "mean_accepted_length": None, "stats": None}
    return {"acceptance_rate": stats.acceptance_rate, "mean_accepted_length": stats.mean_accepted_length,
            "stats": {f: getattr(stats, f) for f in SpecStats.__slots__}}


def total(runs: list[dict]) -> dict:
    """One column over all workloads."""
    tokens, seconds, stats = sum(r["tokens"] for r in runs), sum(r["seconds"] for r in runs), None
    for r in runs:
        if r["stats"] is not None:
            stats = stats or SpecStats()
            stats.add(SpecStats(**r["stats"]))
    return {"tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds, **spec_summary(stats),
            "mismatches": [m for r in runs for m in r["mismatches"]]}


def lcs(a: list[int], b: list[int]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def copied(out: list[int], src: list[int], n: int = 8) -> float:
    grams = {tuple(src[i:i + n]) for i in range(len(src) - n + 1)}
    hit = [False] * len(out)
    for i in range(len(out) - n + 1):
        if tuple(out[i:i + n]) in grams:
            hit[i:i + n] = [True] * n
    return sum(hit) / len(out) if out else 0.0


def table(workloads: list[str], columns: list[str], rows: dict) -> str:
    head = "| workload | " + " | ".join(columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for wl in workloads + ["all"]:
        cells = []
        for c in columns:
            r = rows[wl][c]
            cell = f"{r['tok_s']:.1f} ({r['ratio']:.2f}x)"
            if r.get("acceptance_rate") is not None and c != "none":
                cell += f" acc {r['acceptance_rate']:.2f}, {r['mean_accepted_length']:.2f} tok/step"
            if r.get("mismatches"):
                cell += f" MISMATCH {len(r['mismatches'])}"
            cells.append(cell)
        lines.append(f"| {wl} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="none,ngram,suffix,auto", help="our speculative methods (columns)")
    ap.add_argument("--k", type=int, default=8, help="draft tokens per step (the cap for auto)")
    ap.add_argument("--workloads", default="chat,code_edit,summarise_quote,agent")
    ap.add_argument("--max-tokens", type=int, default=0, help="override every workload's max_tokens (smoke tests)")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF generate columns")
    args = ap.parse_args()
    start, load_start = time.perf_counter(), os.getloadavg()
    loaded = load_model(ModelConfig(device="cpu", dtype="float32"))
    tok = loaded.tokenizer
    columns = args.methods.split(",") + ([] if args.no_hf else [HF_PLAIN, HF_LOOKUP])
    fns = {c: make_column(loaded, c, args.k) for c in columns}
    warm = apply_chat_template(tok, [{"role": "user", "content": "Say hello."}])
    for fn in fns.values():  # warm-up, untimed
        fn(warm, 16)
    names = args.workloads.split(",")
    workloads = [load_workload(n) for n in names]
    ref = "none" if "none" in columns else columns[0]
    rows: dict = {}
    overlap: dict = {}
    for wl in workloads:
        rows[wl["name"]] = run_workload(tok, wl, fns, args.max_tokens)
        print(f"{wl['name']:>16}: " + ", ".join(f"{c} {r['tok_s']:.1f}" for c, r in rows[wl["name"]].items()) + " tok/s",
              flush=True)
        base = rows[wl["name"]][ref]
        overlap[wl["name"]] = [
            {"prompt_tokens": len(p), "output_tokens": len(o), "lcs": lcs(o, p) / max(1, len(o)), "copied": copied(o, p)}
            for o, p in zip(base["outputs"], base["prompt_ids"])
        ]
        for r in rows[wl["name"]].values():
            r["ratio"] = r["tok_s"] / base["tok_s"]
            r["mismatches"] = [{"workload": wl["name"], "request": i, "first_difference_at": first_difference(o, b)}
                               for i, (o, b) in enumerate(zip(r["outputs"], base["outputs"])) if o != b]
    rows["all"] = {c: total([rows[n][c] for n in names]) for c in columns}
    for r in rows["all"].values():
        r["ratio"] = r["tok_s"] / rows["all"][ref]["tok_s"]
    texts = {n: [decode(tok, o) for o in rows[n][ref]["outputs"]] for n in names}
    for n in names:
        for c in columns:
            del rows[n][c]["outputs"], rows[n][c]["prompt_ids"]
    runtime = time.perf_counter() - start
    path = write_result("spec", {
        "env": {**environment(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "model": loaded.info.name, "dtype": "float32", "k": args.k, "hf_prompt_lookup_num_tokens": 10,
        "reference": ref, "runtime_s": runtime, "rows": rows, "overlap": overlap, "reference_texts": texts,
    })
    print("\ntok/s (ratio vs our plain; acceptance rate, tokens per verify step)\n")
    print(table(names, columns, rows))
    print("\nreference output overlap with its prompt (lcs / copied), per request:")
    for n in names:
        print(f"  {n}: " + ", ".join(f"{o['lcs']:.2f}/{o['copied']:.2f} ({o['output_tokens']} tok)" for o in overlap[n]))
    print(f"\ntotal runtime {runtime:.0f} s (load average {load_start[0]:.1f} → {os.getloadavg()[0]:.1f}); wrote {path}")


if __name__ == "__main__":
    main()
