"""`kakeya bench`: every comparison side by side in one run → JSON, docs/benchmarks.md tables, a PNG plot.

Sections (all by default; --only picks):
  decode     plain greedy decode per config: our fast path, our eager path, HF `generate`, and
             llama.cpp on the GGUF file; each as a fraction of the DRAM bound measured in this run
  workloads  the speculation workloads (scripts/bench/workloads): ours plain and `auto` in float32
             and in the --best config, HF `generate` plain and prompt lookup, llama.cpp plain and
             prompt lookup; tok/s = generated tokens / wall time, prefill included
  latency    prefill tok/s of a ~2k-token prompt; TTFT and inter-token latency, in-process vs HTTP
  shapes     random-weight Qwen3-0.6B/1.7B shapes on --device (default: on when CUDA or MPS is present)

llama.cpp is the llama-cpp-python peer in its own cached venv; when it is absent the suite says so
and skips it (build it once with `bash scripts/bench/install_llama_cpp.sh`).
--short is the smoke/CI mode (fewer tokens, configs and repeats; JSON only unless --docs).

    kakeya bench                # the full suite (~30 min on 2 cores), regenerates docs/benchmarks.md
    kakeya bench --short        # a few minutes
    kakeya bench --short --only shapes --device mps    # the Mac M4 workflow's run
    kakeya bench --render scripts/bench/results/gpu_check.json   # scripts/gpu_check.sh's result → docs
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import decode  # noqa: E402
import gpu_check  # noqa: E402
import latency  # noqa: E402
import memory  # noqa: E402
import shapes  # noqa: E402
import spec  # noqa: E402
from common import (DOC, NO_PLOT, ROOT, dram_bandwidth_gbs, environment, first_difference, git_commit, pyplot,  # noqa: E402
                    update_doc, write_result)
from llama_peer import LlamaCppPeer, missing_reason  # noqa: E402

from inference_engine.config import ModelConfig  # noqa: E402
from inference_engine.models import load_model  # noqa: E402
from inference_engine.models.loader import default_gguf  # noqa: E402

PLOT = ROOT / "docs" / "bench_workloads.png"
BEGIN, END = "<!-- kakeya bench: begin (generated, do not edit) -->", "<!-- kakeya bench: end -->"
GPU_BEGIN, GPU_END = "<!-- gpu_check: begin (generated, do not edit) -->", "<!-- gpu_check: end -->"
COPY_HEAVY = ("code_edit", "summarise_quote", "agent")


def workload_columns(f32, best, best_name: str, peer, k: int) -> tuple[dict, dict]:
    """Column name → fn(prompt ids, max tokens) and column → the plain column its output must equal."""
    cols = {"kakeya float32 plain": spec.make_column(f32, "none", k), "kakeya float32 auto": spec.make_column(f32, "auto", k),
            f"kakeya {best_name} plain": spec.make_column(best, "none", k),
            f"kakeya {best_name} auto": spec.make_column(best, "auto", k),
            "HF generate": spec.make_column(f32, spec.HF_PLAIN, k),
            "HF prompt lookup": spec.make_column(f32, spec.HF_LOOKUP, k)}
    # each column must reproduce the plain output of the model it runs: float32 speculation and HF
    # against our float32 plain, the quantized auto against the quantized plain
    refs = {c: "kakeya float32 plain" for c in cols}
    refs[f"kakeya {best_name} plain"] = None
    refs[f"kakeya {best_name} auto"] = f"kakeya {best_name} plain"
    if peer is not None:
        eos = list(f32.info.eos_ids)
        cols["llama.cpp"] = lambda ids, n: (peer.generate(ids, n, eos)[0], None)
        cols["llama.cpp prompt lookup"] = lambda ids, n: (peer.generate(ids, n, eos, lookup=True)[0], None)
        refs["llama.cpp"] = refs["llama.cpp prompt lookup"] = "llama.cpp"
    for c, r in refs.items():
        if r == c:
            refs[c] = None
    return cols, refs


def run_workloads(f32, best, best_name: str, peer, names: list[str], k: int, max_tokens: int) -> dict:
    cols, refs = workload_columns(f32, best, best_name, peer, k)
    warm = f32.tokenizer.encode("Say hello.")
    for fn in cols.values():
        fn(warm, 8)
    rows = {}
    for name in names:
        runs = spec.run_workload(f32.tokenizer, spec.load_workload(name), cols, max_tokens)
        for c, r in runs.items():
            ref = runs[refs[c]] if refs[c] else None
            r["equal_to"] = refs[c]
            r["mismatches"] = [] if ref is None else [
                {"request": i, "first_difference_at": first_difference(o, b)}
                for i, (o, b) in enumerate(zip(r["outputs"], ref["outputs"])) if o != b]
        for r in runs.values():
            del r["outputs"], r["prompt_ids"]
        rows[name] = runs
        print(f"{name:>16}: " + ", ".join(f"{c} {r['tok_s']:.1f}" for c, r in runs.items()) + " tok/s", flush=True)
    rows["all"] = {c: spec.total([rows[n][c] for n in names]) for c in cols}
    return {"columns": list(cols), "equal_to": refs, "rows": rows}


def workloads_table(w: dict) -> str:
    cols = w["columns"]
    lines = ["| workload | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, runs in w["rows"].items():
        cells = []
        for c in cols:
            r = runs[c]
            cell = f"{r['tok_s']:.1f}"
            if r.get("acceptance_rate") is not None and "auto" in c:
                cell += f" ({r['mean_accepted_length']:.2f} tok/step)"
            if r["mismatches"]:
                cell += f" ≠{len(r['mismatches'])}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(w: dict, path: Path) -> str:
    plt = pyplot()
    if plt is None:
        return NO_PLOT
    names, cols = list(w["rows"]), w["columns"]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(cols)
    for j, c in enumerate(cols):
        ax.bar([i + j * width for i in range(len(names))], [w["rows"][n][c]["tok_s"] for n in names], width, label=c)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
    ax.set_ylabel("tok/s (generated tokens / wall time)")
    ax.set_title("SmolLM2-135M-Instruct, CPU: tok/s per workload and system")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"wrote {path}"


def targets(res: dict) -> list[str]:
    """The issue's targets, each with the value this run measured."""
    out = []
    d = {r["dtype"]: r for r in res.get("decode", {}).get("rows", [])}
    llama = next((r for r in d.values() if "llama_cpp_tok_s" in r), None)
    ours = [r for r in d.values() if "kakeya_tok_s" in r]
    if "float32" in d:
        f = d["float32"]
        out.append(f"float32 plain decode ≥ 0.5 of the DRAM bound and ≥ 1.7× HF: {f['kakeya_fraction_of_bound']:.2f} of the bound, "
                   f"{f['ratio_kakeya_over_hf']:.2f}× HF")
    if ours and llama:
        best = max(ours, key=lambda r: r["kakeya_tok_s"])
        out.append(f"best plain config ≥ 0.75× llama.cpp plain: {best['dtype']} {best['kakeya_tok_s']:.1f} tok/s = "
                   f"{best['kakeya_tok_s'] / llama['llama_cpp_tok_s']:.2f}× llama.cpp ({llama['llama_cpp_tok_s']:.1f})")
    w = res.get("workloads")
    if w:
        rows, best_auto = w["rows"], next(c for c in w["columns"] if c.endswith("auto") and "float32" not in c)
        best_plain = best_auto.replace("auto", "plain")
        for name in [n for n in COPY_HEAVY if n in rows]:
            r = rows[name]
            line = (f"{name}: auto ÷ own plain ≥ 3×: float32 {r['kakeya float32 auto']['tok_s'] / r['kakeya float32 plain']['tok_s']:.2f}×, "
                    f"{best_auto.removeprefix('kakeya ')} {r[best_auto]['tok_s'] / r[best_plain]['tok_s']:.2f}×")
            if "llama.cpp" in r:
                line += f"; auto ÷ llama.cpp plain ≥ 1.5×: {r[best_auto]['tok_s'] / r['llama.cpp']['tok_s']:.2f}×"
            out.append(line)
        if "chat" in rows:
            r = rows["chat"]
            out.append(f"chat: auto ≥ 0.97× own plain: float32 {r['kakeya float32 auto']['tok_s'] / r['kakeya float32 plain']['tok_s']:.2f}×, "
                       f"{best_auto.removeprefix('kakeya ')} {r[best_auto]['tok_s'] / r[best_plain]['tok_s']:.2f}×")
    for r in res.get("latency", []):
        out.append(f"{r['config']}: HTTP streaming ≥ 0.95× in-process: {r['streaming']['http_over_in_process_decode']:.2f}×")
    return out


def markdown(res: dict, command: str) -> str:
    env = res["env"]
    parts = [BEGIN, "", f"Generated by `{command}` at commit {res['commit']} on {env['date']} ({env['machine']}, torch {env['torch']}, "
             f"{env['threads']} threads; DRAM read {res['dram_read_gbs']:.1f} GB/s in this run; llama.cpp: {res['llama_cpp']}).", ""]
    parts += ["**Targets** (measured in this run):", ""] + [f"- {t}" for t in targets(res)] + [""]
    if "decode" in res:
        parts += ["### Plain decode", "", decode.table(res["decode"]["rows"]), ""]
    if "workloads" in res:
        parts += ["### Workloads (tok/s; ≠n: n requests whose output differs from the column named in the JSON's `equal_to`)",
                  "", workloads_table(res["workloads"]), "", f"![tok/s per workload and system]({PLOT.name})", ""]
    if "latency" in res:
        parts += ["### Prefill, TTFT, inter-token latency", "", latency.table(res["latency"]), ""]
    if "shapes" in res:
        parts += ["### Random-weight Qwen3 shapes", "", shapes.table(res["shapes"]), ""]
    if "memory" in res:
        parts += [f"### Memory: KV bytes per token held by a session of L tokens (k = {res['memory']['k']}; docs/metrics.md)", "",
                  memory.table(res["memory"]["rows"]), f"Draft model: {res['memory']['draft_model']}.", ""]
    return "\n".join(parts + [END])


def render(path: str) -> None:
    """A gpu_check.py result (run elsewhere: scripts/gpu_check.sh) into docs/benchmarks.md."""
    res = json.loads(Path(path).read_text())
    update_doc("\n".join([GPU_BEGIN, "", gpu_check.markdown(res), "", GPU_END]), GPU_BEGIN, GPU_END,
               "## Accelerator check (`scripts/gpu_check.sh`, issue 13)")
    print(f"updated {DOC}")


def main() -> None:
    ap = argparse.ArgumentParser(prog="kakeya bench", description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="smoke mode: a few minutes")
    ap.add_argument("--only", default=None, help="comma-separated sections (default: all that fit the machine)")
    ap.add_argument("--device", default="auto", help="device of the shapes section")
    ap.add_argument("--configs", default=None, help="decode configs (default float32,bfloat16,bfloat16+int8,bfloat16+int4)")
    ap.add_argument("--best", default="bfloat16+int4", help="the fast config in the workloads and latency sections")
    ap.add_argument("--workloads", default="chat,code_edit,summarise_quote,agent")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--docs", action="store_true", help="with --short, still rewrite docs/benchmarks.md")
    ap.add_argument("--render", metavar="JSON", help="only put a scripts/gpu_check.sh result into docs/benchmarks.md")
    ap.add_argument("--vs-llama-cpp", action="store_true",
                    help="only the default server against llama.cpp on the same GGUF (scripts/bench/vs_llama.py), into docs")
    args, rest = ap.parse_known_args()
    if args.vs_llama_cpp:
        import vs_llama

        return vs_llama.main(["--docs", *rest], " ".join(["kakeya bench", *map(shlex.quote, sys.argv[1:])]))
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.render:
        return render(args.render)
    command = " ".join(["kakeya bench", *map(shlex.quote, sys.argv[1:])])
    tokens, repeats = (32, 1) if args.short else (128, 3)
    configs = args.configs or ("float32,bfloat16+int4" if args.short else "float32,bfloat16,bfloat16+int8,bfloat16+int4")
    gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    sections = (args.only or "decode,workloads,latency,memory" + (",shapes" if gpu else "")).split(",")
    t0, load0 = time.perf_counter(), os.getloadavg()
    res: dict = {"env": environment(), "command": command, "commit": git_commit(), "dram_read_gbs": dram_bandwidth_gbs()}
    reason = "skipped (--no-llama-cpp)" if args.no_llama_cpp else missing_reason()
    if sections == ["shapes"]:
        reason = "not part of the shapes section"
    peer = LlamaCppPeer(default_gguf()) if reason is None else None
    res["llama_cpp"] = f"llama-cpp-python {peer.version}" if peer else f"not measured: {reason}"
    print(res["llama_cpp"], flush=True)
    try:
        if "decode" in sections:
            rows = [decode.run(c, tokens, repeats, res["dram_read_gbs"]) for c in configs.split(",")]
            if peer is not None:
                f32 = load_model(ModelConfig(device="cpu", dtype="float32"))
                rows.append(decode.run_llama_cpp(peer, default_gguf(), f32.tokenizer, tokens, repeats, res["dram_read_gbs"]))
            res["decode"] = {"rows": rows}
            print(decode.table(rows), flush=True)
        if "workloads" in sections:
            f32 = load_model(ModelConfig(device="cpu", dtype="float32"))
            dtype, _, quant = args.best.partition("+")
            best = load_model(ModelConfig(device="cpu", dtype=dtype, quantization=quant or "none"))
            names = args.workloads.split(",")[:2] if args.short else args.workloads.split(",")
            res["workloads"] = run_workloads(f32, best, args.best, peer, names, 8, 48 if args.short else 0)
            print(workloads_table(res["workloads"]), flush=True)
        if "shapes" in sections:
            names = ["qwen3-0.6b"] if args.short else ["qwen3-0.6b", "qwen3-1.7b"]  # 8B: scripts/gpu_check.sh
            res["shapes"] = shapes.measure(args.device, names, tokens, repeats)
            print(shapes.table(res["shapes"]), flush=True)
        if "latency" in sections:
            res["latency"] = [latency.run(c, tokens, repeats, peer) for c in ("float32", args.best)]
            print(latency.table(res["latency"]), flush=True)
        if "memory" in sections:
            res["memory"] = memory.run(configs.split(","), [512] if args.short else [512, 2048, 4096],
                                       [(4, 256)] if args.short else [(4, 64), (4, 256), (4, 1024)])
    finally:
        if peer is not None:
            peer.close()
    res["runtime_s"], res["loadavg"] = time.perf_counter() - t0, [load0, os.getloadavg()]
    path = write_result("suite_short" if args.short else "suite", res)
    print(f"wrote {path}")
    if "workloads" in res:
        print(plot(res["workloads"], PLOT))
    if not args.short or args.docs:
        update_doc(markdown(res, command), BEGIN, END, "## Latest `kakeya bench`")
        print(f"updated {DOC}")
    print("\n".join(["", "targets:"] + targets(res)))


if __name__ == "__main__":
    main()
