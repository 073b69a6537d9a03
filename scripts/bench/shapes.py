"""Plain decode at real Qwen3 sizes with random weights, on any device (CUDA, MPS, CPU).

Speed does not need trained weights: Qwen3-0.6B and Qwen3-1.7B shapes are built from their
published configs with random init, no hub, no tokenizer. Columns: our fast path, our eager path
(the transformers forward in our engine), HF `generate`; 64 random prompt tokens, `--tokens` new
tokens, eos ignored, greedy. Bandwidth is measured on the device (a sum over 1 GiB) and the nominal
peak of known devices is reported beside it; fraction of bound = tok/s × weight bytes ÷ bandwidth.

    .venv/bin/python scripts/bench/shapes.py --device cuda --shapes qwen3-0.6b,qwen3-1.7b
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, weight_bytes, write_result  # noqa: E402

from inference_engine.config import EngineConfig  # noqa: E402
from inference_engine.engine.core import EngineCore  # noqa: E402
from inference_engine.types import SamplingParams, SpeculativeParams  # noqa: E402

# the published configs' sizes (Qwen/Qwen3-0.6B, Qwen/Qwen3-1.7B config.json)
SHAPES = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128),
}
NOMINAL_GBS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0, "M4": 120.0}  # peak memory bandwidth


def device_bandwidth_gbs(device: torch.device) -> float:
    x = torch.ones((1 << 30) // 4, device=device)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        t0 = time.perf_counter()
        x.sum().item()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "Apple GPU (MPS)" if device.type == "mps" else "CPU"


def build(shape: str, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=151936, max_position_embeddings=40960, rope_theta=1000000.0, tie_word_embeddings=True,
                         rms_norm_eps=1e-6, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(dtype).eval()
    return model


def run(shape: str, device: torch.device, dtype: torch.dtype, tokens: int, repeats: int, bandwidth: float) -> dict:
    model = build(shape, device, dtype)
    prompt = torch.randint(0, 151936, (64,), generator=torch.Generator().manual_seed(1)).tolist()
    sp, plain = SamplingParams(max_tokens=tokens, ignore_eos=True), SpeculativeParams("none", 0)
    cores = {"kakeya": EngineCore(model, [], EngineConfig(prefix_cache=False)),
             "kakeya_eager": EngineCore(model, [], EngineConfig(prefix_cache=False, fast_path=False))}

    def ours(core):
        req = core.add_request(prompt, sp, plain)
        while core.has_work:
            core.step()
        return req.output_ids

    inputs = torch.tensor([prompt], device=device)

    @torch.inference_mode()
    def hf():
        return model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=tokens, min_new_tokens=tokens,
                              do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()

    systems = {"kakeya": lambda: ours(cores["kakeya"]), "kakeya_eager": lambda: ours(cores["kakeya_eager"]), "hf_generate": hf}
    seconds, outputs = {n: [] for n in systems}, {}
    for i in range(repeats + 1):  # round 0 warms up
        for name, fn in systems.items():
            _sync(device)
            t0 = time.perf_counter()
            outputs[name] = fn()
            _sync(device)
            if i:
                seconds[name].append(time.perf_counter() - t0)
    wb = weight_bytes(model)
    row = {"shape": shape, "device": device_name(device), "dtype": str(dtype).removeprefix("torch."), "new_tokens": tokens,
           "weight_bytes": wb, "bandwidth_bound_tok_s": bandwidth * 1e9 / wb,
           "identical_output": outputs["kakeya"] == outputs["hf_generate"] == outputs["kakeya_eager"]}
    for name, ts in seconds.items():
        t = sorted(ts)[len(ts) // 2]
        row[f"{name}_tok_s"] = tokens / t
        row[f"{name}_fraction_of_bound"] = tokens / t * wb / (bandwidth * 1e9)
    return row


def nominal(device: torch.device) -> float | None:
    name = device_name(device)
    return next((v for k, v in NOMINAL_GBS.items() if k in name), None)


def table(res: dict) -> str:
    lines = [f"Device: {res['device']}; measured bandwidth {res['bandwidth_gbs']:.0f} GB/s"
             + (f", nominal peak {res['nominal_gbs']:.0f} GB/s" if res.get("nominal_gbs") else "") + ".", "",
             "| shape | dtype | Kakeya tok/s | Kakeya eager tok/s | HF generate tok/s | Kakeya % of measured bound "
             "| identical greedy output |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['kakeya_tok_s']:.1f} | {r['kakeya_eager_tok_s']:.1f} "
                     f"| {r['hf_generate_tok_s']:.1f} | {100 * r['kakeya_fraction_of_bound']:.0f} % "
                     f"| {'yes' if r['identical_output'] else 'no'} |")
    return "\n".join(lines)


def measure(device_arg: str, shapes: list[str], tokens: int, repeats: int) -> dict:
    from inference_engine.models.device import resolve_device

    device = resolve_device(device_arg)
    dtype = torch.float16 if device.type == "mps" else torch.bfloat16
    bw = device_bandwidth_gbs(device)
    rows = [run(s, device, dtype, tokens, repeats, bw) for s in shapes]
    return {"device": device_name(device), "bandwidth_gbs": bw, "nominal_gbs": nominal(device), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--shapes", default="qwen3-0.6b,qwen3-1.7b")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    res = measure(args.device, args.shapes.split(","), args.tokens, args.repeats)
    path = write_result(f"shapes_{res['device'].split()[0].lower()}", {"env": environment(), **res})
    print(f"{table(res)}\n\nwrote {path}")


if __name__ == "__main__":
    main()
