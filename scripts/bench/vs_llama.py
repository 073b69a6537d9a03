"""Issue 24: the server's defaults against llama.cpp on the same GGUF, side by side in one run.

Kakeya runs exactly what `kakeya serve` builds with no flags (its parser's defaults, on-disk caches included):
plain decoding (method none) and its default speculation, warm (one engine for every request)
and cold (a fresh engine per request: no prefix cache, suffix index or controller history).
llama.cpp (llama-cpp-python, scripts/bench/install_llama_cpp.sh) decodes the same prompts
greedily from the same file, each with a cold prefill. Prompts are generated outside the repo's
workloads (workloads/generated.py, seeded). Prefill is included; tok/s = new tokens ÷ seconds.
Peak RSS: llama.cpp's process (one model, n_ctx 8192) after the run, and a separate process doing
what a fresh `kakeya serve` does for one 128-token chat (the benchmark's own process holds a fresh
engine per cold request, which no server does).

    .venv/bin/python scripts/bench/vs_llama.py --prompts 12 --seed 2424 --max-tokens 192
"""
from __future__ import annotations

import argparse
import gc
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, table, update_doc, write_result  # noqa: E402
from llama_peer import LlamaCppPeer, missing_reason  # noqa: E402
from workloads import generated  # noqa: E402

from inference_engine.cli import build_parser, engine_config, model_config  # noqa: E402
from inference_engine.engine.llm import LLM  # noqa: E402
from inference_engine.models import load_model  # noqa: E402
from inference_engine.models.loader import gguf_file  # noqa: E402
from inference_engine.tokenizer import apply_chat_template  # noqa: E402
from inference_engine.types import SamplingParams, SpeculativeParams  # noqa: E402

OPEN_KINDS = ("open",)  # the rest (copy, quote, reformat, summarise) are copy-heavy


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


ONE_CHAT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from inference_engine.cli import build_parser, engine_config, model_config
from inference_engine.engine.llm import LLM
from inference_engine.models import load_model
from inference_engine.tokenizer import apply_chat_template
from inference_engine.types import SamplingParams
serve = build_parser().parse_args(["serve"])
llm = LLM(load_model(model_config(serve)), engine_config(serve))
ids = apply_chat_template(llm.tokenizer, [{"role": "user", "content": "Write a short story about a lighthouse."}])
llm.generate(ids, SamplingParams(max_tokens=128, temperature=0.0, ignore_eos=True))
print([int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")][0])
"""


def server_rss_mb() -> float:
    """Peak RSS of a process that does what a fresh `kakeya serve` does for one 128-token chat
    (this benchmark's own process holds many engines and is no server). VmHWM, not ru_maxrss,
    which a child inherits from the parent it was forked from."""
    out = subprocess.run([sys.executable, "-c", ONE_CHAT, str(Path(__file__).resolve().parents[2])],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    serve = build_parser().parse_args(["serve"])  # exactly what `kakeya serve` builds with no flags
    loaded, config = load_model(model_config(serve)), engine_config(serve)
    info = loaded.info
    default_spec = config.speculative
    # plain decoding on its own engine, so the warm engine's suffix index never holds the answer
    # it is about to give; both warmed up on a prompt outside the set (first-call costs, the
    # verify-cost calibration, which then sits in the on-disk cache that cold engines read)
    plain_llm, warm = LLM(loaded, config), LLM(loaded, config)
    warmup = apply_chat_template(warm.tokenizer, [{"role": "user", "content": "Say hello."}])
    for llm, spec in ((plain_llm, SpeculativeParams("none", 0)), (warm, default_spec)):
        llm.generate(warmup, SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True), spec)
    # half open-ended, half taken in turn from the copy-heavy kinds
    per_kind = {wl["name"].removeprefix("gen_"): wl["requests"] for wl in generated.generate(args.prompts, args.seed)}
    copy_kinds = [k for k in generated.KINDS if k not in OPEN_KINDS]
    requests = [dict(r, kind="open") for r in per_kind["open"][: args.prompts // 2]]
    requests += [dict(per_kind[k][i // len(copy_kinds)], kind=k)
                 for i, k in zip(range(args.prompts - len(requests)), copy_kinds * args.prompts)]
    peer = LlamaCppPeer(gguf_file(None))
    sp = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    rows = []
    for i, req in enumerate(requests):
        ids = apply_chat_template(warm.tokenizer, req["messages"]) + warm.tokenizer.encode(req["prefix"], add_special_tokens=False)
        row = {"kind": req["kind"], "prompt_tokens": len(ids)}
        for name, spec, engine in (("plain", SpeculativeParams("none", 0), plain_llm),
                                   ("auto_cold", default_spec, None), ("auto_warm", default_spec, warm)):
            llm = engine or LLM(loaded, config)
            t0 = time.perf_counter()
            out = llm.generate(ids, sp, spec)
            row[name] = {"tok_s": len(out.token_ids) / (time.perf_counter() - t0), "tokens": len(out.token_ids)}
            row[name + "_ids"] = out.token_ids
        ref, secs = peer.generate(ids, args.max_tokens, stop=list(info.eos_ids), fresh=True)
        row["llama_cpp"] = {"tok_s": len(ref) / secs, "tokens": len(ref)}
        row["auto_equals_plain"] = row["auto_cold_ids"] == row["plain_ids"] and row["auto_warm_ids"] == row["plain_ids"]
        row["plain_equals_llama_cpp"] = row["plain_ids"] == ref
        for k in ("plain_ids", "auto_cold_ids", "auto_warm_ids"):
            row.pop(k)
        rows.append(row)
        print(f"[{i + 1}/{len(requests)}] {row['kind']:9s} plain {row['plain']['tok_s']:6.1f}  auto cold "
              f"{row['auto_cold']['tok_s']:6.1f} warm {row['auto_warm']['tok_s']:6.1f}  llama.cpp "
              f"{row['llama_cpp']['tok_s']:6.1f} tok/s  exact={row['auto_equals_plain']}", flush=True)
    rss = {"llama_cpp_mb": peak_rss_mb(peer.proc.pid), "bench_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    peer.close()
    rss["kakeya_mb"] = server_rss_mb()
    return {"model": info.name, "quantization": info.quantization, "dtype": info.dtype,
            "path": warm.core.verifier.path, "rows": rows, "peak_rss": rss}


def summary(result: dict) -> dict:
    def ratios(key, kinds_open):
        r = [row[key]["tok_s"] / row["llama_cpp"]["tok_s"] for row in result["rows"] if (row["kind"] in OPEN_KINDS) == kinds_open]
        return [round(min(r), 2), round(max(r), 2), round(statistics.median(r), 2)] if r else None
    own = [row["auto_cold"]["tok_s"] / row["plain"]["tok_s"] for row in result["rows"]]
    return {
        "plain_vs_llama_cpp": {"open": ratios("plain", True), "copy": ratios("plain", False)},
        "auto_cold_vs_llama_cpp": {"open": ratios("auto_cold", True), "copy": ratios("auto_cold", False)},
        "auto_warm_vs_llama_cpp": {"open": ratios("auto_warm", True), "copy": ratios("auto_warm", False)},
        "auto_cold_vs_own_plain_min": round(min(own), 2),
        "exact": sum(row["auto_equals_plain"] for row in result["rows"]),
        "requests": len(result["rows"]),
        "peak_rss_ratio": round(result["peak_rss"]["kakeya_mb"] / result["peak_rss"]["llama_cpp_mb"], 2),
    }


BEGIN, END = "<!-- kakeya bench --vs-llama-cpp: begin (generated, do not edit) -->", "<!-- kakeya bench --vs-llama-cpp: end -->"


def markdown(result: dict, command: str) -> str:
    """The side-by-side table for docs/benchmarks.md."""
    env, s, rss = result["environment"], result["summary"], result["peak_rss"]
    span = lambda r: "–" if r is None else f"{r[0]:.2f}–{r[1]:.2f} (median {r[2]:.2f})"  # noqa: E731
    lines = [BEGIN, "", f"Generated by `{command}` on {env['date']} ({env['machine']}, torch {env['torch']}, "
             f"{env['threads']} threads): {result['model']}, weights `{result['quantization']}`, decode path "
             f"`{result['path']}`, {len(result['rows'])} generated prompts (seed {result['args']['seed']}), greedy, "
             f"{result['args']['max_tokens']} new tokens at most, prefill included.", ""]
    header = ("prompt", "prompt tokens", "Kakeya plain tok/s", "auto cold", "auto warm", "llama.cpp tok/s",
              "plain ÷ llama.cpp", "auto cold ÷ llama.cpp", "auto = plain")
    lines.append(table(header, [
        (r["kind"], r["prompt_tokens"], f"{r['plain']['tok_s']:.1f}", f"{r['auto_cold']['tok_s']:.1f}",
         f"{r['auto_warm']['tok_s']:.1f}", f"{r['llama_cpp']['tok_s']:.1f}", f"{r['plain']['tok_s'] / r['llama_cpp']['tok_s']:.2f}",
         f"{r['auto_cold']['tok_s'] / r['llama_cpp']['tok_s']:.2f}", "yes" if r["auto_equals_plain"] else "**no**")
        for r in result["rows"]]))
    lines += ["", f"- plain ÷ llama.cpp plain: open-ended {span(s['plain_vs_llama_cpp']['open'])}, copy-heavy "
              f"{span(s['plain_vs_llama_cpp']['copy'])}",
              f"- auto (cold) ÷ llama.cpp plain: open-ended {span(s['auto_cold_vs_llama_cpp']['open'])}, copy-heavy "
              f"{span(s['auto_cold_vs_llama_cpp']['copy'])}; warm: open-ended {span(s['auto_warm_vs_llama_cpp']['open'])}, "
              f"copy-heavy {span(s['auto_warm_vs_llama_cpp']['copy'])}",
              f"- auto (cold) ÷ own plain, lowest: {s['auto_cold_vs_own_plain_min']:.2f}; speculative output equal to plain: "
              f"{s['exact']}/{s['requests']}",
              f"- peak RSS: Kakeya {rss['kakeya_mb']:.0f} MB (a fresh server process after one 128-token chat), llama.cpp "
              f"{rss['llama_cpp_mb']:.0f} MB after the whole run (one model, n_ctx 8192): {s['peak_rss_ratio']:.2f}×",
              "", END]
    return "\n".join(lines)


def main(argv=None, command: str = "python scripts/bench/vs_llama.py") -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--seed", type=int, default=2424)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--out", default="vs_llama")
    ap.add_argument("--docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args(argv)
    if missing_reason():
        sys.exit(missing_reason())
    gc.collect()
    result = run(args)
    result["summary"] = summary(result)
    result["environment"] = environment()
    result["args"] = vars(args)
    print(result["summary"])
    write_result(args.out, result)
    if args.docs:

        update_doc(markdown(result, command), BEGIN, END, "## The default server against llama.cpp (issue 24)")


if __name__ == "__main__":
    main()
