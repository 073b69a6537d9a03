"""Plain greedy decode: Kakeya's engine vs HF `generate`, SmolLM2-135M-Instruct, per dtype and quantization.

Configurations are `dtype[+int8|+int4]` (weight-only quantization on torch's packed CPU
kernels; HF `generate` runs the same quantized modules). Columns: our fast path, our engine on
the transformers forward (`--eager`), HF `generate`.

Same prompt, same number of new tokens (eos ignored by both), greedy outputs compared token
for token. Both run side by side in one process, alternating, median of --repeats. Also
measures DRAM read bandwidth and reports each as a fraction of the memory-bandwidth bound
(bandwidth / weight bytes per token).

    .venv/bin/python scripts/bench/decode.py --tokens 128 --repeats 3 \
        --configs float32,bfloat16,bfloat16+int8,bfloat16+int4
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import alternate, dram_bandwidth_gbs, environment, first_difference, weight_bytes, write_result  # noqa: E402
from common import table as md_table  # noqa: E402

from inference_engine.config import EngineConfig, ModelConfig  # noqa: E402
from inference_engine.engine.llm import LLM  # noqa: E402
from inference_engine.models import load_model  # noqa: E402
from inference_engine.tokenizer import apply_chat_template  # noqa: E402
from inference_engine.types import SamplingParams, SpeculativeParams  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def run(config: str, tokens: int, repeats: int, bandwidth: float) -> dict:
    """One configuration: our fast path, our eager path (the transformers forward inside our
    engine) and HF `generate`, alternating, mean of `repeats`."""
    dtype, _, quant = config.partition("+")
    cfg = ModelConfig(device="cpu", dtype=dtype, quantization=quant or "none")
    loaded = load_model(cfg)
    # once the fast path fuses int4 layers, the originals compute through the fused ones (slower):
    # the eager and HF baselines get their own, unfused copy
    ref = load_model(cfg) if quant == "int4" else loaded
    model = ref.model
    fast, eager = LLM(loaded), LLM(ref, EngineConfig(fast_path=False))
    ids = apply_chat_template(loaded.tokenizer, [{"role": "user", "content": PROMPT}])
    sp = SamplingParams(max_tokens=tokens, ignore_eos=True)
    plain = SpeculativeParams("none", 0)
    gen_cfg = copy.deepcopy(model.generation_config)
    gen_cfg.eos_token_id = None  # same as ignore_eos: run exactly `tokens` steps
    gen_cfg.do_sample, gen_cfg.temperature, gen_cfg.top_p, gen_cfg.top_k = False, None, None, None
    inputs = torch.tensor([ids])

    @torch.inference_mode()
    def hf():
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=gen_cfg,
                             max_new_tokens=tokens, pad_token_id=0)
        return out[0, len(ids):].tolist()

    systems = {"kakeya": lambda: fast.generate(ids, sp, plain).token_ids,
               "kakeya_eager": lambda: eager.generate(ids, sp, plain).token_ids, "hf_generate": hf}
    timings, outputs = alternate(systems, repeats)  # alternate so drift on a shared VM hits all of them
    seconds = {name: t.mean for name, t in timings.items()}
    bound = bandwidth * 1e9 / weight_bytes(model)
    row = {"dtype": config, "new_tokens": tokens, "prompt_tokens": len(ids), "weight_bytes": weight_bytes(model),
           "bandwidth_bound_tok_s": bound}
    for name in systems:
        row[f"{name}_tok_s"] = tokens / seconds[name]
        row[f"{name}_fraction_of_bound"] = tokens / seconds[name] / bound
    row["ratio_kakeya_over_hf"] = seconds["hf_generate"] / seconds["kakeya"]
    row["ratio_kakeya_over_eager"] = seconds["kakeya_eager"] / seconds["kakeya"]
    row["identical_output"] = outputs["kakeya"] == outputs["hf_generate"] == outputs["kakeya_eager"]
    row["first_difference_at"] = first_difference(outputs["kakeya"], outputs["hf_generate"])
    return row


def run_llama_cpp(peer, gguf: Path, tokenizer, tokens: int, repeats: int, bandwidth: float) -> dict:
    """llama.cpp plain decode on the GGUF file itself; every byte of the file counts as read per token."""
    ids = apply_chat_template(tokenizer, [{"role": "user", "content": PROMPT}])
    peer.generate(ids, tokens)  # warm-up
    seconds = sorted(peer.generate(ids, tokens)[1] for _ in range(repeats))[repeats // 2]  # prompt KV reused
    bound = bandwidth * 1e9 / gguf.stat().st_size
    return {"dtype": f"llama.cpp {gguf.stem.rpartition('.')[2]}", "new_tokens": tokens, "weight_bytes": gguf.stat().st_size,
            "bandwidth_bound_tok_s": bound, "llama_cpp_tok_s": tokens / seconds,
            "llama_cpp_fraction_of_bound": tokens / seconds / bound}


def table(rows: list[dict]) -> str:
    def cells(r: dict) -> tuple:
        if "llama_cpp_tok_s" in r:
            return (r["dtype"], f"{r['llama_cpp_tok_s']:.1f} (llama.cpp)", "", "", "", f"{r['bandwidth_bound_tok_s']:.0f}",
                    f"{100 * r['llama_cpp_fraction_of_bound']:.0f} %", "", "")
        same = "yes" if r["identical_output"] else f"no (first difference at token {r['first_difference_at']})"
        return (r["dtype"], f"{r['kakeya_tok_s']:.1f}", f"{r['kakeya_eager_tok_s']:.1f}", f"{r['hf_generate_tok_s']:.1f}",
                f"{r['ratio_kakeya_over_hf']:.2f}x", f"{r['bandwidth_bound_tok_s']:.0f}",
                f"{100 * r['kakeya_fraction_of_bound']:.0f} %", f"{100 * r['hf_generate_fraction_of_bound']:.0f} %", same)

    return md_table(("config", "Kakeya tok/s", "Kakeya eager tok/s", "HF generate tok/s", "Kakeya / HF",
                          "bound tok/s", "Kakeya % of bound", "HF % of bound", "identical greedy output"), map(cells, rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--configs", default="float32,bfloat16,bfloat16+int8,bfloat16+int4")
    args = ap.parse_args()
    bw = dram_bandwidth_gbs()
    rows = [run(c, args.tokens, args.repeats, bw) for c in args.configs.split(",")]
    path = write_result("decode", {"env": environment(), "dram_read_gbs": bw, "rows": rows})
    print(f"DRAM read bandwidth: {bw:.1f} GB/s\n\n{table(rows)}\n\nwrote {path}")


if __name__ == "__main__":
    main()
