"""Issue 13, first measurement: the fast path's one-token step as one compiled graph
(embedding → every block → norm → lm_head, B = 1, T = 1, the cache position dynamic) against
the eager fast path, side by side in one process, per weight format. Records the compile time,
ms per step at a growing context, and whether the compiled step picks the same tokens.

Time nothing while another torch process runs on the machine: the load average is recorded.

    .venv/bin/python scripts/bench/compiled_step.py --formats float32,bfloat16+int4 --engine
    .venv/bin/python scripts/bench/compiled_step.py --formats bfloat16+int4 --native --out compiled_vs_native
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, timed, write_result  # noqa: E402
from workloads import generated  # noqa: E402

from inference_engine.cache.kv_cache import KVCache  # noqa: E402
from inference_engine.config import EngineConfig, ModelConfig  # noqa: E402
from inference_engine.engine.llm import LLM  # noqa: E402
from inference_engine.engine.verifier import Verifier  # noqa: E402
from inference_engine.models import load_model  # noqa: E402
from inference_engine.tokenizer import apply_chat_template  # noqa: E402
from inference_engine.types import SamplingParams, SpeculativeParams  # noqa: E402

def whole_step(fast, head):
    """The step as one Python function over tensors only, embedding and lm_head included."""
    def step(ids, cos, sin, keys, values, start: int):  # ids [1, 1]; keys[i] [1, Hkv, cap, D]
        return head(fast.one_token(ids, cos, sin, keys, values, start)[:, -1])  # [1, V]
    return step


def decode(fast, head, step, model, prompt: torch.Tensor, steps: int) -> tuple[list[int], list[float]]:
    """Greedy decode `steps` tokens after an eager prefill; seconds per step."""
    cache = KVCache(model.config)
    with torch.inference_mode():
        hidden = fast.forward(prompt[None], [cache], [0])
        cache.length = prompt.numel()
        cache.reserve(prompt.numel() + steps + 1, hidden)
        tok = int(head(hidden[:, -1]).argmax(-1))
        out, secs = [tok], []
        for _ in range(steps):
            start = cache.length
            ids = torch.tensor([[tok]])
            t0 = time.perf_counter()
            cos, sin = fast._rotary(torch.tensor([[start]]), hidden)
            logits = step(ids, cos, sin, cache.keys, cache.values, start)
            tok = int(logits.argmax(-1))
            secs.append(time.perf_counter() - t0)
            cache.length = start + 1
            out.append(tok)
    return out, secs


def measure(fmt: str, steps: int, context: int, options: dict) -> dict:
    dtype, _, quant = fmt.partition("+")
    model = load_model(ModelConfig(device="cpu", dtype=dtype, quantization=quant or "none", verify_weights="same")).model
    fast, head = Verifier(model).fast, model.get_output_embeddings()
    torch.manual_seed(0)
    prompt = torch.randint(100, model.config.vocab_size - 100, (context,))
    eager = whole_step(fast, head)
    compiled = torch.compile(eager, dynamic=True, options=options or None)
    t0 = time.perf_counter()
    with torch.inference_mode():
        decode(fast, head, compiled, model, prompt, 2)  # compiles (and recompiles once for a dynamic start)
    compile_s = time.perf_counter() - t0
    runs = {"eager": [], "compiled": []}
    tokens = {}
    for _ in range(3):  # alternate, so load changes hit both
        for name, fn in (("eager", eager), ("compiled", compiled)):
            tokens[name], secs = decode(fast, head, fn, model, prompt, steps)
            runs[name].append(statistics.median(secs[4:]))
    eager_ms, comp_ms = min(runs["eager"]) * 1e3, min(runs["compiled"]) * 1e3
    row = {"format": fmt, "options": options, "context": context, "steps": steps, "compile_s": compile_s,
           "eager_ms": eager_ms, "compiled_ms": comp_ms, "speedup": eager_ms / comp_ms,
           "runs_ms": {k: [s * 1e3 for s in v] for k, v in runs.items()},
           "same_tokens": tokens["eager"] == tokens["compiled"]}
    print(f"{fmt:>14} {options}: eager {eager_ms:.2f} ms/step, compiled {comp_ms:.2f} ({eager_ms / comp_ms:.2f}×), "
          f"compile {compile_s:.0f} s, same tokens: {row['same_tokens']}", flush=True)
    return row


def native(steps: int, context: int) -> dict:
    """The default configuration's step (`kakeya serve` with no flags: the GGUF's own blocks, the
    whole step one C++ call, nothing left to compile), same context and steps, same process."""
    loaded = load_model(ModelConfig(device="cpu"))
    v = Verifier(loaded.model)
    torch.manual_seed(0)
    prompt = torch.randint(100, loaded.model.config.vocab_size - 100, (context,)).tolist()
    runs = []
    for _ in range(3):
        cache = v.new_cache()
        tok = [int(v.forward(cache, prompt, 1)[-1].argmax())]

        def step() -> None:
            tok[0] = int(v.forward(cache, tok, 1)[-1].argmax())

        runs.append(timed(step, steps - 4, warmup=4)[0].median)
    row = {"format": f"{loaded.info.dtype}+{loaded.info.quantization}", "path": v.path, "context": context,
           "steps": steps, "native_ms": min(runs) * 1e3, "runs_ms": [s * 1e3 for s in runs]}
    print(f"{row['format']:>14} ({v.path}): {row['native_ms']:.2f} ms/step", flush=True)
    return row


def engines(fmt: str, requests: int, max_tokens: int, seed: int) -> dict:
    """Plain decoding through the real engine, generated open-ended prompts (prefill included),
    one engine on the eager fast path and one with `--compile` (timed once its graph is live)."""
    dtype, _, quant = fmt.partition("+")
    loaded = load_model(ModelConfig(device="cpu", dtype=dtype, quantization=quant or "none"))
    reqs = generated.generate(requests, seed, ("open",), max_tokens)[0]["requests"]
    ids = [apply_chat_template(loaded.tokenizer, r["messages"]) for r in reqs]
    t0 = time.perf_counter()
    llms = {"fast": LLM(loaded, EngineConfig(prefix_cache=False)), "compiled": LLM(loaded, EngineConfig(compile=True, prefix_cache=False))}
    state = llms["compiled"].core.verifier.fast.step.wait()
    ready_s = time.perf_counter() - t0
    sp, plain = SamplingParams(max_tokens=max_tokens), SpeculativeParams("none", 0)
    for llm in llms.values():
        llm.generate(ids[0], SamplingParams(max_tokens=8), plain)  # warm-up
    out = {m: {"tokens": 0, "seconds": 0.0, "outputs": []} for m in llms}
    for p in ids:
        for m, llm in llms.items():  # alternate, so load changes hit both
            t = time.perf_counter()
            res = llm.generate(p, sp, plain)
            out[m]["seconds"] += time.perf_counter() - t
            out[m]["tokens"] += len(res.token_ids)
            out[m]["outputs"].append(res.token_ids)
    tok_s = {m: v["tokens"] / v["seconds"] for m, v in out.items()}
    row = {"format": fmt, "requests": requests, "max_tokens": max_tokens, "seed": seed, "compile_state": state,
           "ready_s": ready_s, "tok_s": tok_s, "speedup": tok_s["compiled"] / tok_s["fast"],
           "same_outputs": out["fast"]["outputs"] == out["compiled"]["outputs"],
           "compiled_calls": llms["compiled"].core.verifier.fast.step.calls}
    print(f"{fmt:>14} engine: fast {tok_s['fast']:.1f} tok/s, --compile {tok_s['compiled']:.1f} "
          f"({row['speedup']:.2f}×; {state} after {ready_s:.0f} s), same outputs: {row['same_outputs']}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--formats", default="float32,bfloat16+int4")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--options", default="",
                    help="inductor option sets to try, ';'-separated, each 'a=1,b=0' (e.g. cpp_wrapper=1;freezing=1)")
    ap.add_argument("--out", default="compiled_step")
    ap.add_argument("--engine", action="store_true", help="also compare whole engines on generated open-ended prompts")
    ap.add_argument("--native", action="store_true", help="also time the default configuration's native step")
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--seed", type=int, default=4321)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    sets = [dict((kv.split("=")[0], bool(int(kv.split("=")[1]))) for kv in o.split(",") if kv)
            for o in (args.options.split(";") if args.options else [""])]
    rows = [measure(f, args.steps, args.context, o) for f in args.formats.split(",") for o in sets]
    engine_rows = [engines(f, args.requests, args.max_tokens, args.seed) for f in args.formats.split(",")] if args.engine else []
    native_row = native(args.steps, args.context) if args.native else None
    write_result(args.out, {"env": environment(), "argv": sys.argv[1:], "loadavg": [load, os.getloadavg()[0]],
                            "rows": rows, "engines": engine_rows, "native": native_row})


if __name__ == "__main__":
    main()
