"""Prefill throughput, time to first token and inter-token latency: in-process vs through HTTP.

prefill: a ~2k-token prompt, cold (no prefix reuse), one new token; tok/s = prompt tokens / time.
Ours (fast path), HF (one forward of the transformers model), llama.cpp when its peer is present.

streaming: the same chat request, greedy, plain decoding, `--tokens` new tokens with eos ignored,
(a) in-process, timestamps from the engine's token callback, and (b) through a real
`kakeya serve` process on 127.0.0.1, timestamps at each SSE chunk read by httpx. Each repeat
uses a fresh prompt so the prefix cache never helps. decode tok/s = (tokens - 1) / (last - first).

    .venv/bin/python scripts/bench/latency.py --tokens 128 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Server, environment, write_result  # noqa: E402
from common import table as md_table  # noqa: E402

from inference_engine.config import EngineConfig, ModelConfig  # noqa: E402
from inference_engine.engine.llm import LLM  # noqa: E402
from inference_engine.models import load_model  # noqa: E402
from inference_engine.tokenizer import apply_chat_template  # noqa: E402
from inference_engine.types import SamplingParams, SpeculativeParams  # noqa: E402

PASSAGE = Path(__file__).parent / "workloads" / "passage.txt"
PLAIN = SpeculativeParams("none", 0)


def long_prompt(tokenizer, target: int = 2048) -> list[int]:
    """A chat prompt of about `target` tokens: the workloads' passage repeated, then a question."""
    text, body = PASSAGE.read_text(), ""
    while len(tokenizer.encode(body)) < target - 40:
        body += text
    ids = tokenizer.encode(body)[: target - 40]
    content = tokenizer.decode(ids) + "\n\nSummarise the passage above in one sentence."
    return apply_chat_template(tokenizer, [{"role": "user", "content": content}])


def prefill(loaded, peer, repeats: int, hf_model=None) -> dict:
    """hf_model: an unfused copy for the HF baseline (int4 originals compute through the fused layers)."""
    ids = long_prompt(loaded.tokenizer)
    llm = LLM(loaded, EngineConfig(prefix_cache=False))
    model, inputs = hf_model if hf_model is not None else loaded.model, torch.tensor([ids])

    @torch.inference_mode()
    def hf():
        model(input_ids=inputs, logits_to_keep=1)

    systems = {"kakeya": lambda: llm.generate(ids, SamplingParams(max_tokens=1), PLAIN), "hf": hf}
    best = {name: min(_timed(fn) for _ in range(repeats)) for name, fn in systems.items()}
    if peer is not None:
        best["llama_cpp"] = min(peer.generate(ids, 1, fresh=True)[1] for _ in range(repeats))
    return {"prompt_tokens": len(ids), **{f"{k}_tok_s": len(ids) / t for k, t in best.items()}}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summarise(starts: float, stamps: list[float], tokens: int) -> dict:
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    q = statistics.quantiles(gaps, n=100) if len(gaps) > 1 else [gaps[0] if gaps else 0.0] * 99
    return {"ttft_s": stamps[0] - starts, "itl_p50_s": q[49], "itl_p90_s": q[89], "itl_p99_s": q[98],
            "decode_tok_s": (tokens - 1) / (stamps[-1] - stamps[0]), "tokens": tokens, "chunks": len(stamps)}


def in_process(llm: LLM, ids: list[int], tokens: int) -> dict:
    stamps: list[float] = []
    t0 = time.perf_counter()
    res = llm.generate(ids, SamplingParams(max_tokens=tokens, ignore_eos=True), PLAIN,
                       on_token=lambda _: stamps.append(time.perf_counter()) and False)
    return summarise(t0, stamps, len(res.token_ids))


def over_http(client: httpx.Client, content: str, tokens: int) -> dict:
    model = client.get("/v1/models").json()["data"][0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    stamps, usage = [], None
    t0 = time.perf_counter()  # the request starts here, as a client sees it
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
    return summarise(t0, stamps, usage["completion_tokens"])


def streaming(loaded, config: str, tokens: int, repeats: int) -> dict:
    dtype, _, quant = config.partition("+")
    llm, server = LLM(loaded), Server("--device", "cpu", "--dtype", dtype, "--quantization", quant or "none",
                                       "--speculative-method", "none")
    runs: dict[str, list[dict]] = {"in_process": [], "http": []}
    try:
        for i in range(repeats + 1):  # the first round warms both up and is dropped
            content = f"Request {i}: write a short story about a lighthouse keeper who finds a message in a bottle."
            ids = apply_chat_template(loaded.tokenizer, [{"role": "user", "content": content}])
            a, b = in_process(llm, ids, tokens), over_http(server.client, content, tokens)
            if i:
                runs["in_process"].append(a)
                runs["http"].append(b)
    finally:
        server.close()
    out = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    out["http_over_in_process_decode"] = out["http"]["decode_tok_s"] / out["in_process"]["decode_tok_s"]
    return {"config": config, **out}


def run(config: str, tokens: int, repeats: int, peer=None) -> dict:
    dtype, _, quant = config.partition("+")
    cfg = ModelConfig(device="cpu", dtype=dtype, quantization=quant or "none")
    loaded = load_model(cfg)
    hf_model = load_model(cfg).model if quant == "int4" else None
    return {"config": config, "prefill": prefill(loaded, peer, repeats, hf_model),
            "streaming": streaming(loaded, config, tokens, repeats)}


def table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        p, s = r["prefill"], r["streaming"]
        pre = f"{p['kakeya_tok_s']:.0f} / {p['hf_tok_s']:.0f} / " + (f"{p['llama_cpp_tok_s']:.0f}" if "llama_cpp_tok_s" in p else "—")
        for path in ("in_process", "http"):
            x, first = s[path], path == "in_process"
            out.append((r["config"] if first else "", pre if first else "", path.replace("_", "-"), f"{1000 * x['ttft_s']:.0f}",
                        f"{1000 * x['itl_p50_s']:.1f} / {1000 * x['itl_p90_s']:.1f} / {1000 * x['itl_p99_s']:.1f}",
                        f"{x['decode_tok_s']:.1f}", "" if first else f"{s['http_over_in_process_decode']:.2f}x"))
    return md_table(("config", "prefill tok/s (2k prompt): Kakeya / HF / llama.cpp", "path", "TTFT ms",
                          "ITL p50 / p90 / p99 ms", "decode tok/s", "HTTP ÷ in-process"), out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--configs", default="float32,bfloat16+int4")
    args = ap.parse_args()
    rows = [run(c, args.tokens, args.repeats) for c in args.configs.split(",")]
    path = write_result("latency", {"env": environment(), "rows": rows})
    print(f"{table(rows)}\n\nwrote {path}")


if __name__ == "__main__":
    main()
