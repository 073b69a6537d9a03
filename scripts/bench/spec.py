"""Speculative decoding, cold and warm: Kakeya's proposers vs plain, and HF `generate` (plain, prompt lookup).

SmolLM2-135M-Instruct on CPU, greedy; float32 by default, `--dtype bfloat16 --quantization int4`
for the reduced-precision build. Workloads: the committed four (scripts/bench/workloads/, see its
README: open chat, code editing, summarise with quotes, a multi-turn agent session) and, with
`--generated N --seed S`, N requests of each generated kind (workloads/generated.py: copy,
quote, reformat, summarise and open-ended prompts built from the standard library by seed).

Modes (`--mode cold|warm|both`):
- warm: one engine per column across all workloads, requests in order, so earlier requests fill
  that column's prefix cache, suffix index and controller history (what a long-running server sees).
- cold: a fresh engine for every request (empty prefix cache, suffix index, controller history)
  on the same loaded weights. Building it is not timed. The verify-cost seed curve is measured
  once at the start into a calibration file that every engine of both modes reads: it is machine
  state, not workload state.
HF `generate` keeps no state between calls, so cold == warm for it: its columns run once and the
same numbers appear in both tables. All columns of both modes take turns request by request, so
drift on a shared VM hits all of them. eos ends a request (ours and HF use the same ids); the
eos token counts as generated.

tok/s = generated tokens / wall time, prefill included. Each column's greedy output must equal
our plain output of the same mode token for token; mismatches are recorded, not fatal. Per
request: tokens, seconds, tok/s, acceptance, verify steps, equal to plain; per workload: the
aggregate ratio and the distribution of per-request ratios vs plain. Overlap of the reference
output with its prompt: `lcs` = longest common token subsequence / output length, `copied` =
fraction of output tokens inside an 8-token span that also occurs in the prompt.

    .venv/bin/python scripts/bench/spec.py --methods none,ngram,suffix,auto --k 8
    .venv/bin/python scripts/bench/spec.py --mode both --workloads= --generated 3 --seed 1234 --max-tokens 192
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, write_result  # noqa: E402
from llama_peer import LlamaCppPeer, missing_reason  # noqa: E402
from spec_modes import ColdColumn, compare, result_name, split_modes  # noqa: E402
from spec_report import add_distributions, overlap, report, targets  # noqa: E402
from workloads import generated  # noqa: E402

from inference_engine.config import EngineConfig, ModelConfig  # noqa: E402
from inference_engine.engine.llm import LLM  # noqa: E402
from inference_engine.models import load_model  # noqa: E402
from inference_engine.models.loader import default_gguf  # noqa: E402
from inference_engine.tokenizer import apply_chat_template, decode  # noqa: E402
from inference_engine.types import SamplingParams, SpecStats, SpeculativeParams  # noqa: E402

WORKLOADS = Path(__file__).parent / "workloads"
HF_PLAIN, HF_LOOKUP = "hf", "hf-lookup"
LLAMA_PLAIN, LLAMA_LOOKUP = "llama.cpp", "llama.cpp-lookup"


def load_workload(name: str) -> dict:
    """A workload JSON; `{{file:NAME}}` in a message is replaced by workloads/NAME."""
    text = (WORKLOADS / f"{name}.json").read_text()
    wl = json.loads(text)
    for req in wl["requests"]:
        for msg in req["messages"]:
            msg["content"] = re.sub(r"\{\{file:([\w.]+)\}\}", lambda m: (WORKLOADS / m[1]).read_text(), msg["content"])
    return {"name": name, **wl}


def hf_column(loaded, name: str):
    """HF `generate` on the same weights: plain, or prompt lookup (10 tokens); keeps no state."""
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


def llama_column(loaded, peer, name: str):
    """llama.cpp (llama-cpp-python, the GGUF of the same model), greedy, its prompt cache dropped
    before every request, so it is stateless like HF; lookup = its prompt-lookup decoding (10)."""
    stop = list(loaded.info.eos_ids)

    def llama(ids, max_tokens):
        return peer.generate(ids, max_tokens, stop, lookup=name == LLAMA_LOOKUP, fresh=True)[0], None
    return llama


def make_column(loaded, name: str, k: int, config: EngineConfig = EngineConfig(), peer=None):
    """A function (prompt_ids, max_tokens) -> (output ids, SpecStats or None) with its own state (warm)."""
    if name in (HF_PLAIN, HF_LOOKUP):
        return hf_column(loaded, name)
    if name in (LLAMA_PLAIN, LLAMA_LOOKUP):
        return llama_column(loaded, peer, name)
    llm = LLM(loaded, config)
    if name == "auto":
        llm.core.speculator.controller  # calibrate (or read) the verify-cost curve now, outside the timed runs
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
    runs = {c: {"outputs": [], "prompt_ids": [], "seconds": 0.0, "stats": None, "requests": []} for c in columns}
    turns = {c: prompts(tok, wl, runs[c]["outputs"]) for c in columns}
    for _ in wl["requests"]:
        for c, column in columns.items():
            run, ids = runs[c], next(turns[c])
            if hasattr(column, "prepare"):
                column.prepare()
            t0 = time.perf_counter()
            out, spec = column(ids, max_tokens or wl["max_tokens"])
            dt = time.perf_counter() - t0
            run["seconds"] += dt
            run["outputs"].append(out)
            run["prompt_ids"].append(ids)
            run["requests"].append({"prompt_tokens": len(ids), "tokens": len(out), "seconds": dt,
                                    "tok_s": len(out) / dt, **request_stats(spec)})
            if spec is not None:
                run["stats"] = run["stats"] or SpecStats()
                run["stats"].add(spec)
    for run in runs.values():
        run["tokens"] = sum(map(len, run["outputs"]))
        run["tok_s"] = run["tokens"] / run["seconds"]
        run.update(spec_summary(run.pop("stats")))
    return runs


def request_stats(spec: SpecStats | None) -> dict:
    if spec is None:
        return {"acceptance_rate": None, "mean_accepted_length": None, "verify_steps": None}
    return {"acceptance_rate": spec.acceptance_rate, "mean_accepted_length": spec.mean_accepted_length,
            "verify_steps": spec.verify_steps}


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


def calibrate(loaded, config: EngineConfig, warm_ids: list[int], k: int) -> list[float]:
    """Measure the verify-cost seed curve once, into config.calibration_file, which every engine
    of this run then reads (a temp file, so a curve from another run or build is never reused).
    The same throw-away engine warms torch's kernels for the cold columns, whose own engines
    must start empty."""
    llm = LLM(loaded, config)
    llm.core.speculator.controller
    llm.generate(warm_ids, SamplingParams(max_tokens=16), SpeculativeParams("auto", k))
    return next(iter(json.loads(Path(config.calibration_file).read_text()).values()))


def build_columns(loaded, modes: list[str], methods: list[str], hf: list[str], k: int, config: EngineConfig, peer=None) -> dict:
    cols: dict = {}
    for mode in modes:
        for m in methods:
            factory = lambda m=m: make_column(loaded, m, k, config)  # noqa: E731
            cols[f"{mode}/{m}"] = ColdColumn(factory) if mode == "cold" else factory()
    for c in hf:
        cols[c] = make_column(loaded, c, k, peer=peer)
    return cols


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="none,ngram,suffix,auto", help="our speculative methods (columns)")
    ap.add_argument("--k", type=int, default=8, help="draft tokens per step (the cap for auto)")
    ap.add_argument("--workloads", default="chat,code_edit,summarise_quote,agent", help="committed workloads; '' for none")
    ap.add_argument("--mode", choices=("cold", "warm", "both"), default="warm",
                    help="cold: a fresh engine per request; warm: one engine per column across the workloads")
    ap.add_argument("--generated", type=int, default=0, metavar="N", help="add N generated requests per kind")
    ap.add_argument("--seed", type=int, default=1234, help="selects every generated request")
    ap.add_argument("--kinds", default=",".join(generated.KINDS), help="generated kinds")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--quantization", choices=("none", "int8", "int4"), default="none")
    ap.add_argument("--max-tokens", type=int, default=0,
                    help="new tokens per request for every workload (0: committed ones keep theirs, generated 192)")
    ap.add_argument("--requests", type=int, default=0, help="only the first R requests of each workload (smoke tests)")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF generate columns")
    ap.add_argument("--llama-cpp", action="store_true",
                    help="add llama.cpp plain and prompt-lookup columns (needs scripts/bench/install_llama_cpp.sh)")
    ap.add_argument("--out", default="", help="result name under scripts/bench/results/ (default: from mode and format)")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    start, load_start = time.perf_counter(), os.getloadavg()
    loaded = load_model(ModelConfig(device="cpu", dtype=args.dtype, quantization=args.quantization))
    tok, fmt = loaded.tokenizer, args.dtype + ("" if args.quantization == "none" else f"+{args.quantization}")
    modes = ["cold", "warm"] if args.mode == "both" else [args.mode]
    methods = [m for m in args.methods.split(",") if m]
    hf = [] if args.no_hf else [HF_PLAIN, HF_LOOKUP]
    peer = None
    if args.llama_cpp:
        reason = missing_reason()
        if reason is not None:
            sys.exit(reason)
        peer, hf = LlamaCppPeer(default_gguf()), hf + [LLAMA_PLAIN, LLAMA_LOOKUP]
    ref = "none" if "none" in methods else (methods + hf)[0]
    names = [n for n in args.workloads.split(",") if n]
    workloads = [load_workload(n) for n in names]
    workloads += generated.generate(args.generated, args.seed, tuple(args.kinds.split(",")), args.max_tokens or 192)
    for wl in workloads:
        wl["requests"] = wl["requests"][:args.requests or None]
    names = [wl["name"] for wl in workloads]
    with tempfile.TemporaryDirectory(prefix="kakeya-spec-") as tmp:
        config = EngineConfig(calibration_file=str(Path(tmp) / "calibration.json"))
        warm = apply_chat_template(tok, [{"role": "user", "content": "Say hello."}])
        curve = calibrate(loaded, config, warm, args.k)
        cols = build_columns(loaded, modes, methods, hf, args.k, config, peer)
        for fn in cols.values():  # warm-up, untimed; not the cold columns (calibrate warmed the kernels)
            if not isinstance(fn, ColdColumn):
                fn(warm, 16)
        rows: dict = {mode: {} for mode in modes}
        overlaps, texts, sources = {}, {}, {}
        for wl in workloads:
            runs = run_workload(tok, wl, cols, args.max_tokens)
            for mode, mode_runs in split_modes(runs, modes, methods, hf).items():
                compare(mode_runs, ref, wl["name"])
                rows[mode][wl["name"]] = mode_runs
            base = rows[modes[0]][wl["name"]][ref]
            overlaps[wl["name"]] = overlap(base["outputs"], base["prompt_ids"])
            texts[wl["name"]] = [decode(tok, o) for o in base["outputs"]]
            if wl.get("generated"):
                sources[wl["name"]] = [r["meta"] for r in wl["requests"]]
            print(f"{wl['name']:>16}: " + ", ".join(f"{c} {r['tok_s']:.1f}" for c, r in runs.items()) + " tok/s", flush=True)
    cold_vs_warm = []
    if len(modes) == 2 and "none" in methods:
        cold_vs_warm = [{"workload": n, "request": i} for n in names for i, (a, b) in enumerate(zip(
            rows["cold"][n]["none"]["outputs"], rows["warm"][n]["none"]["outputs"])) if a != b]
    for mode in modes:
        add_distributions(rows[mode], names, ref)
        rows[mode]["all"] = {c: total([rows[mode][n][c] for n in names]) for c in methods + hf}
        for r in rows[mode]["all"].values():
            r["ratio"] = r["tok_s"] / rows[mode]["all"][ref]["tok_s"]
        for n in names:
            for r in rows[mode][n].values():
                r.pop("outputs", None), r.pop("prompt_ids", None)
    checks = targets(rows, names, fmt, fmt == "float32", overlaps)
    runtime = time.perf_counter() - start
    setup = {c: {"engines": f.engines, "setup_seconds": f.setup_seconds} for c, f in cols.items() if isinstance(f, ColdColumn)}
    name = result_name(args.out, args.mode, args.generated, bool(args.workloads), args.dtype, args.quantization)
    path = write_result(name, {
        "env": {**environment(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()}, "argv": sys.argv[1:],
        "model": loaded.info.name, "dtype": args.dtype, "quantization": args.quantization, "k": args.k,
        "hf_prompt_lookup_num_tokens": 10, "llama_cpp": peer.version if peer else None, "hf_shared_between_modes": len(modes) == 2 and bool(hf),
        "reference": ref, "modes": modes, "calibration_curve": curve, "cold_setup": setup,
        "generated": {"n": args.generated, "seed": args.seed, "sources": generated.sources() if args.generated else None,
                      "requests": sources},
        "runtime_s": runtime, "targets": checks, "cold_vs_warm_plain_mismatches": cold_vs_warm,
        **({"rows": rows["warm"]} if modes == ["warm"] else {"rows_by_mode": rows}),
        "overlap": overlaps, "reference_texts": texts,
    })
    if peer is not None:
        peer.close()
    print(report(rows, names, methods + hf, overlaps, sources, checks, fmt, cold_vs_warm, args.seed))
    if setup:
        print("\ncold engines built (untimed): " + ", ".join(f"{c} {s['engines']} in {s['setup_seconds']:.0f} s" for c, s in setup.items()))
    print(f"\ntotal runtime {runtime:.0f} s (load average {load_start[0]:.1f} → {os.getloadavg()[0]:.1f}); wrote {path}")


if __name__ == "__main__":
    main()
