"""Plain greedy decode: Kakeya's engine vs HF `generate`, SmolLM2-135M-Instruct, per dtype and quantization.

Configurations are `dtype[+int8|+int4]` (weight-only quantization on torch's packed CPU
kernels; HF `generate` runs the same quantized modules).

Same prompt, same number of new tokens (eos ignored by both), greedy outputs compared token
for token. Both run side by side in one process, alternating, median of --repeats. Also
measures DRAM read bandwidth and reports each as a fraction of the memory-bandwidth bound
(bandwidth / weight bytes per token).

    .venv/bin/python scripts/bench/decode.py --tokens 128 --repeats 3 \
        --configs float32,bfloat16,float32+int8,bfloat16+int8,float32+int4,bfloat16+int4
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import dram_bandwidth_gbs, environment, median_time, weight_bytes, write_result  # noqa: E402

from inference_engine.config import ModelConfig  # noqa: E402
from inference_engine.engine.llm import LLM  # noqa: E402
from inference_engine.models import load_model  # noqa: E402
from inference_engine.tokenizer import apply_chat_template  # noqa: E402
from inference_engine.types import SamplingParams, SpeculativeParams  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def run(config: str, tokens: int, repeats: int, bandwidth: float) -> dict:
    dtype, _, quant = config.partition("+")
    loaded = load_model(ModelConfig(device="cpu", dtype=dtype, quantization=quant or "none"))
    llm, model = LLM(loaded), loaded.model
    ids = apply_chat_template(loaded.tokenizer, [{"role": "user", "content": PROMPT}])
    sp = SamplingParams(max_tokens=tokens, ignore_eos=True)
    plain = SpeculativeParams("none", 0)
    gen_cfg = copy.deepcopy(model.generation_config)
    gen_cfg.eos_token_id = None  # same as ignore_eos: run exactly `tokens` steps
    gen_cfg.do_sample, gen_cfg.temperature, gen_cfg.top_p, gen_cfg.top_k = False, None, None, None
    inputs = torch.tensor([ids])

    def ours():
        return llm.generate(ids, sp, plain).token_ids

    @torch.inference_mode()
    def hf():
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=gen_cfg,
                             max_new_tokens=tokens, pad_token_id=0)
        return out[0, len(ids):].tolist()

    ours(), hf()  # warm-up
    t_ours = t_hf = 0.0
    for _ in range(repeats):  # alternate so drift on a shared VM hits both
        t, out_ours = median_time(ours, 1)
        t_ours += t
        t, out_hf = median_time(hf, 1)
        t_hf += t
    t_ours, t_hf = t_ours / repeats, t_hf / repeats
    first_diff = next((i for i, (a, b) in enumerate(zip(out_ours, out_hf)) if a != b), None)
    bound = bandwidth * 1e9 / weight_bytes(model)
    return {
        "dtype": config,
        "new_tokens": tokens,
        "prompt_tokens": len(ids),
        "kakeya_tok_s": tokens / t_ours,
        "hf_generate_tok_s": tokens / t_hf,
        "ratio_kakeya_over_hf": t_hf / t_ours,
        "weight_bytes": weight_bytes(model),
        "bandwidth_bound_tok_s": bound,
        "kakeya_fraction_of_bound": tokens / t_ours / bound,
        "hf_fraction_of_bound": tokens / t_hf / bound,
        "identical_output": out_ours == out_hf,
        "first_difference_at": first_diff,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| config | Kakeya plain tok/s | HF generate tok/s | Kakeya / HF | bound tok/s | Kakeya % of bound | HF % of bound | identical greedy output |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = "yes" if r["identical_output"] else f"no (first difference at token {r['first_difference_at']})"
        lines.append(
            f"| {r['dtype']} | {r['kakeya_tok_s']:.1f} | {r['hf_generate_tok_s']:.1f} | {r['ratio_kakeya_over_hf']:.2f}x "
            f"| {r['bandwidth_bound_tok_s']:.0f} | {100 * r['kakeya_fraction_of_bound']:.0f} % "
            f"| {100 * r['hf_fraction_of_bound']:.0f} % | {same} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--configs", default="float32,bfloat16,float32+int8,bfloat16+int8,float32+int4,bfloat16+int4")
    args = ap.parse_args()
    bw = dram_bandwidth_gbs()
    rows = [run(c, args.tokens, args.repeats, bw) for c in args.configs.split(",")]
    path = write_result("decode", {"env": environment(), "dram_read_gbs": bw, "rows": rows})
    print(f"DRAM read bandwidth: {bw:.1f} GB/s\n\n{table(rows)}\n\nwrote {path}")


if __name__ == "__main__":
    main()
