"""Agent traces through /v1/responses with previous_response_id: Kakeya `auto` (the default) vs plain.

Each arm is a real `kakeya serve` with the defaults a user gets (embedded SmolLM2 GGUF, native CPU
step, `auto` speculation) plus `--temperature 0`, so the arms must agree token for token. The
traces are generated (workloads/agent_traces.py: tool calls and outputs fixed by the seed, every
answer the model's own). Cold: a fresh server per trace and arm (no suffix index, controller or
session from earlier traces); warm: one server per arm across all traces. Each turn is chained to
the previous response (store on), so a follow-up prefills only its new items; per turn: time to the
first streamed delta, decode rate (output tokens ÷ time from first delta to the end), the cached
prompt tokens the server reports, and the text.

    .venv/bin/python scripts/bench/agent_trace.py --traces 4 --seed 9090 --max-tokens 128

llama.cpp columns (plain and prompt lookup over the same conversations) are not in this runner yet.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "workloads"))

from agent_traces import INSTRUCTIONS, TOOLS, generate  # noqa: E402
from common import Server, environment, write_result  # noqa: E402

ARMS = {"plain": {"speculative": {"method": "none"}}, "auto": {}}


def turn(client: httpx.Client, url: str, body: dict) -> dict:
    """One streamed response: TTFT, decode seconds, usage, id and text."""
    t0, first, final, text = time.perf_counter(), None, None, []
    with client.stream("POST", url + "/v1/responses", json={**body, "stream": True}, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"].endswith(".delta") and first is None:
                first = time.perf_counter()
            if event["type"] == "response.output_text.delta":
                text.append(event["delta"])
            if event["type"] in ("response.completed", "response.incomplete", "response.failed"):
                final = event["response"]
    end = time.perf_counter()
    usage = final["usage"]
    return {"id": final["id"], "status": final["status"], "ttft_s": (first or end) - t0,
            "decode_s": end - (first or end), "output_tokens": usage["output_tokens"],
            "input_tokens": usage["input_tokens"], "cached_tokens": usage["input_tokens_details"]["cached_tokens"],
            "speculative": usage.get("speculative"), "text": "".join(text)}


def run_trace(client: httpx.Client, url: str, trace: dict, arm: dict, model: str, max_tokens: int) -> list[dict]:
    out, previous = [], None
    for t in trace["turns"]:
        body = {"model": model, "input": t["input"], "tools": TOOLS, "instructions": INSTRUCTIONS,
                "max_output_tokens": max_tokens, **arm}
        if previous:
            body["previous_response_id"] = previous
        rec = turn(client, url, body)
        previous = rec["id"]
        out.append({"kind": t["kind"], **rec})
    return out


def summary(turns: list[dict]) -> dict:
    tokens = sum(t["output_tokens"] for t in turns)
    decode = sum(t["decode_s"] for t in turns)
    return {"output_tokens": tokens, "decode_s": decode, "tok_s": tokens / decode if decode else 0.0,
            "ttft_s": sum(t["ttft_s"] for t in turns) / max(1, len(turns))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=4)
    ap.add_argument("--seed", type=int, default=9090)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--mode", choices=("cold", "warm", "both"), default="both")
    ap.add_argument("--out", default="agent_trace")
    args = ap.parse_args()
    traces = generate(args.traces, args.seed)
    modes = ["cold", "warm"] if args.mode == "both" else [args.mode]
    results: dict = {mode: {arm: [] for arm in ARMS} for mode in modes}
    with httpx.Client() as client:
        for mode in modes:
            for arm, extra in ARMS.items():
                server = Server("--temperature", "0") if mode == "warm" else None
                try:
                    for tr in traces:
                        srv = server or Server("--temperature", "0")
                        try:
                            model = client.get(srv.url + "/v1/models").json()["data"][0]["id"]
                            results[mode][arm].append(run_trace(client, srv.url, tr, extra, model, args.max_tokens))
                        finally:
                            if server is None:
                                srv.close()
                finally:
                    if server is not None:
                        server.close()
    report: dict = {}
    for mode in modes:
        plain, auto = results[mode]["plain"], results[mode]["auto"]
        flat = {arm: [t for tr in results[mode][arm] for t in tr] for arm in ARMS}
        kinds = sorted({t["kind"] for t in flat["plain"]})
        report[mode] = {
            "all": {arm: summary(flat[arm]) for arm in ARMS},
            "by_kind": {k: {arm: summary([t for t in flat[arm] if t["kind"] == k]) for arm in ARMS} for k in kinds},
            "identical_text": all(a["text"] == p["text"] for ta, tp in zip(auto, plain) for a, p in zip(ta, tp)),
            "ttft_last_over_first": [tr[-1]["ttft_s"] / tr[0]["ttft_s"] for tr in auto],
            "last_turn_input_tokens": [tr[-1]["input_tokens"] for tr in auto],
        }
        r = report[mode]["all"]
        r["auto_over_plain"] = r["auto"]["tok_s"] / r["plain"]["tok_s"]
        print(f"{mode}: plain {r['plain']['tok_s']:.1f} tok/s, auto {r['auto']['tok_s']:.1f} tok/s "
              f"({r['auto_over_plain']:.2f}x), identical {report[mode]['identical_text']}", flush=True)
        for k, v in report[mode]["by_kind"].items():
            print(f"  {k:>8}: plain {v['plain']['tok_s']:.1f}, auto {v['auto']['tok_s']:.1f} "
                  f"({v['auto']['tok_s'] / v['plain']['tok_s']:.2f}x)")
    path = write_result(args.out, {"env": environment(), "argv": sys.argv[1:], "traces": [
        {"source": t["source"], "lines": t["lines"]} for t in traces], "report": report, "turns": results})
    print("wrote", path)


if __name__ == "__main__":
    main()
