"""`kakeya bench` memory section: what a session really costs in bytes (issue 16).

Per weight config: weight bytes; the KV a session holds after L tokens (full vs sink + window),
read from the session store after a real prefill; the suffix index's bytes per indexed token
(tracemalloc around add_sequence); and the net bytes per token — (verifier KV + proposer memory,
its weights amortised over batch × L) ÷ L — against the plain full-KV baseline. Activations are a
peak, not a per-token cost, and are left out (docs/metrics.md, "Bytes per token").
"""
from __future__ import annotations

import random
import tracemalloc

from common import weight_bytes
from kv_cache_proposer.suffix import SuffixProposer

from inference_engine.config import EngineConfig, ModelConfig
from inference_engine.engine.llm import LLM
from inference_engine.models import load_model
from inference_engine.types import SamplingParams, SpeculativeParams

PLAIN = SpeculativeParams("none", 0)


def suffix_bytes(tokens: list[int]) -> int:
    """Bytes the suffix index allocates to hold `tokens` (one past sequence)."""
    tracemalloc.start()
    index = SuffixProposer(max_tokens=len(tokens))
    before = tracemalloc.get_traced_memory()[0]
    index.add_sequence(tokens)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held


def session_kv(llm: LLM, prompt: list[int], window, k: int) -> int:
    """KV bytes a session holds after prefilling `prompt` and one k-draft step's worth of headroom."""
    sid = f"mem-{len(prompt)}-{window}"
    llm.core.sessions.create(session_id=sid)
    llm.generate(prompt, SamplingParams(max_tokens=1, kv_window=window or (0, 0)), SpeculativeParams("ngram", k),
                 session_id=sid)
    held = llm.core.sessions.get(sid).kv_bytes
    llm.core.sessions.close(sid)
    return held


def run(configs: list[str], lengths: list[int], windows: list, k: int = 8, batch: int = 1) -> dict:
    rows = []
    for config in configs:
        dtype, _, quant = config.partition("+")
        loaded = load_model(ModelConfig(device="cpu", dtype=dtype, quantization=quant or "none"))
        llm = LLM(loaded, EngineConfig(prefix_cache=False))
        rng = random.Random(0)
        vocab = llm.core.vocab_size
        text = [rng.randrange(100, vocab) for _ in range(max(lengths))]
        suffix = suffix_bytes(text)
        row = {"config": config, "weight_bytes": weight_bytes(loaded.model), "suffix_index_bytes_per_token":
               round(suffix / len(text), 1), "kv": {}}
        for L in lengths:
            for w in [None, *windows]:
                kv = session_kv(llm, text[:L], w, k)
                name = "full" if w is None else f"{w[0]}+{w[1]}"
                # the suffix index holds the session's own text too: L tokens
                net = (kv + suffix / len(text) * L) / L
                row["kv"].setdefault(name, {})[str(L)] = {"kv_bytes": kv, "kv_bytes_per_token": round(kv / L, 1),
                                                          "net_bytes_per_token": round(net, 1)}
        rows.append(row)
        print(table([row]), flush=True)
    return {"rows": rows, "k": k, "batch": batch, "draft_model": "none: no smaller model sharing SmolLM2's tokenizer "
            "is installed here; with --draft-model its weights ÷ (batch × L) and its own KV add to the net figure"}


def table(rows: list[dict]) -> str:
    lines = ["| config | weights (MB) | KV | " + " | ".join(f"L = {L}: KV bytes/token (net)" for L in rows[0]["kv"]["full"]) + " |",
             "|---|---|---|" + "---|" * len(rows[0]["kv"]["full"])]
    for r in rows:
        for name, by_len in r["kv"].items():
            cells = [f"{v['kv_bytes_per_token']:,.0f} ({v['net_bytes_per_token']:,.0f})" for v in by_len.values()]
            lines.append(f"| {r['config']} | {r['weight_bytes'] / 1e6:.0f} | {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Suffix index: " + ", ".join(f"{r['config']} {r['suffix_index_bytes_per_token']:,.0f} B per indexed token"
                                              for r in rows) + " (tracemalloc; net = (KV + suffix index) ÷ L).")
    return "\n".join(lines)
