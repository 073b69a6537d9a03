"""Plain decode at real Qwen3 sizes with random weights, on any device (CUDA, MPS, CPU).

Speed does not need trained weights: Qwen3-0.6B, 1.7B and 8B shapes are built from their
published configs with random init, no hub, no tokenizer. Columns: our fast path (on CUDA with
its one-token CUDA graphs, and again without them), our eager path (the transformers forward in
our engine), HF `generate`; 64 random prompt tokens, `--tokens` new tokens, eos ignored, greedy,
at batch 1 and (`--batch`) with B requests decoding together. Bandwidth is measured on the device
(a sum over 1 GiB) and the nominal peak of known devices is reported beside it; fraction of bound
= tok/s × weight bytes ÷ bandwidth (at batch B, the weights are read once per step for B tokens).
`verify_cost` times one forward of k+1 tokens ÷ one of 1 token at 256 cached positions, k = 0..16.

    .venv/bin/python scripts/bench/shapes.py --device cuda --shapes qwen3-0.6b,qwen3-1.7b,qwen3-8b
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import alternate, environment, timed, weight_bytes, write_result  # noqa: E402
from common import table as md_table  # noqa: E402

from inference_engine.config import EngineConfig  # noqa: E402
from inference_engine.engine.calibration import measure_cost_curve  # noqa: E402
from inference_engine.engine.core import EngineCore  # noqa: E402
from inference_engine.engine.verifier import Verifier  # noqa: E402
from inference_engine.models.device import synchronize  # noqa: E402
from inference_engine.types import SamplingParams, SpeculativeParams, Submission  # noqa: E402

# the published configs' sizes (Qwen/Qwen3-0.6B, -1.7B, -8B config.json)
SHAPES = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}
NOMINAL_GBS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0, "M4": 120.0}  # peak memory bandwidth


def device_bandwidth_gbs(device: torch.device) -> float:
    x = torch.ones((1 << 30) // 4, device=device)
    synchronize(device)
    return x.numel() * 4 / timed(lambda: x.sum().item(), 5)[0].best / 1e9  # .item() waits for the device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "Apple GPU (MPS)" if device.type == "mps" else "CPU"


def build(shape: str, device: torch.device, dtype: torch.dtype, **overrides):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**{**dict(vocab_size=151936, max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6),
                            **SHAPES.get(shape, {}), **overrides})
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: an 8B model never exists in float32
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    return model


def run(shape: str, device: torch.device, dtype: torch.dtype, tokens: int, repeats: int, bandwidth: float,
        batch: int = 1, model=None) -> dict:
    model = model if model is not None else build(shape, device, dtype)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, model.config.vocab_size, (64,), generator=gen).tolist() for _ in range(batch)]
    sp, plain = SamplingParams(max_tokens=tokens, ignore_eos=True), SpeculativeParams("none", 0)
    cores = {"kakeya": EngineCore(model, [], EngineConfig(prefix_cache=False, max_batch=batch, max_running=batch))}
    if device.type == "cuda":  # the fast path above replays CUDA graphs; this one does not
        cores["kakeya_nographs"] = EngineCore(model, [], EngineConfig(prefix_cache=False, max_batch=batch, max_running=batch,
                                                                      cuda_graphs=False))
    cores["kakeya_eager"] = EngineCore(model, [], EngineConfig(prefix_cache=False, fast_path=False, max_batch=batch,
                                                               max_running=batch))

    def ours(core):
        reqs = [core.add_request(Submission(p, sp, plain)) for p in prompts]
        while core.has_work:
            core.step()
        return [r.output_ids for r in reqs]

    inputs = torch.tensor(prompts, device=device)

    @torch.inference_mode()
    def hf():
        return model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=tokens, min_new_tokens=tokens,
                              do_sample=False, pad_token_id=0)[:, len(prompts[0]):].tolist()

    systems = {name: (lambda c=core: ours(c)) for name, core in cores.items()}
    systems["hf_generate"] = hf
    timings, outputs = alternate(systems, repeats, warmup=1, sync=lambda: synchronize(device))
    wb = weight_bytes(model)
    row = {"shape": shape, "device": device_name(device), "dtype": str(dtype).removeprefix("torch."), "batch": batch,
           "new_tokens": tokens, "weight_bytes": wb, "bandwidth_bound_tok_s": bandwidth * 1e9 / wb,
           "identical_output": all(o == outputs["hf_generate"] for o in outputs.values()),
           "identical_to": {n: o == outputs["hf_generate"] for n, o in outputs.items() if n != "hf_generate"}}
    for name, timing in timings.items():
        t = sorted(timing.samples)[len(timing.samples) // 2]  # the upper median
        row[f"{name}_tok_s"] = batch * tokens / t
        row[f"{name}_fraction_of_bound"] = tokens / t * wb / (bandwidth * 1e9)  # steps/s × bytes per step
    return row


def verify_cost(model, device: torch.device, max_k: int = 16, context: int = 256) -> list[float]:
    """t(one forward of k+1 tokens) ÷ t(one of 1 token) on the fast path at `context` cached
    positions, k = 0..max_k (synchronised on accelerators, so kernels are timed, not launches)."""
    v = Verifier(model)
    cache = v.new_cache()
    v.forward(cache, [1] * context, 1)

    def one(k: int) -> None:
        v.forward(cache, [1] * (k + 1), k + 1)
        cache.trim(k + 1)
        synchronize(device)

    return measure_cost_curve(one, max_k, repeats=5)


def nominal(device: torch.device) -> float | None:
    name = device_name(device)
    return next((v for k, v in NOMINAL_GBS.items() if k in name), None)


def table(res: dict) -> str:
    graphs = any("kakeya_nographs_tok_s" in r for r in res["rows"])
    cols = [("kakeya", "Kakeya" + (" (CUDA graphs)" if graphs else ""))] + ([("kakeya_nographs", "Kakeya fast, no graphs")] if graphs else []) \
        + [("kakeya_eager", "Kakeya eager"), ("hf_generate", "HF generate")]
    lines = [f"Device: {res['device']}; measured bandwidth {res['bandwidth_gbs']:.0f} GB/s"
             + (f", nominal peak {res['nominal_gbs']:.0f} GB/s" if res.get("nominal_gbs") else "") + ". tok/s (% of the "
             "measured bandwidth bound: steps/s × weight bytes ÷ bandwidth).", ""]
    lines.append(md_table(("shape", "dtype", "batch", *(c for _, c in cols), "identical greedy output"), [
        (r["shape"], r["dtype"], r.get("batch", 1),
         *(f"{r[f'{n}_tok_s']:.1f} ({100 * r[f'{n}_fraction_of_bound']:.0f} %)" if f"{n}_tok_s" in r else "–" for n, _ in cols),
         "yes" if r["identical_output"] else "no") for r in res["rows"]]))
    curves = {s: c for s, c in res.get("verify_cost", {}).items()}
    if curves:
        ks = range(1, len(next(iter(curves.values()))))
        lines += ["", "Verify cost t(k drafts) ÷ t(plain step), fast path, 256 cached positions:", "",
                  md_table(("shape", *(f"k={k}" for k in ks)), [(s, *(f"{x:.2f}" for x in c[1:])) for s, c in curves.items()])]
    return "\n".join(lines)


def measure(device_arg: str, shapes: list[str], tokens: int, repeats: int, batches: tuple[int, ...] = (1,),
            costs: bool = False) -> dict:
    from inference_engine.models.device import resolve_device

    device = resolve_device(device_arg)
    dtype = torch.float16 if device.type == "mps" else torch.bfloat16
    bw = device_bandwidth_gbs(device)
    rows, curves = [], {}
    for s in shapes:
        model = build(s, device, dtype)
        rows += [run(s, device, dtype, tokens, repeats, bw, b, model) for b in batches]
        if costs:
            curves[s] = verify_cost(model, device)
        print(table({"device": device_name(device), "bandwidth_gbs": bw, "rows": rows[-len(batches):]}), flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"device": device_name(device), "bandwidth_gbs": bw, "nominal_gbs": nominal(device), "rows": rows,
            "verify_cost": curves}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--shapes", default="qwen3-0.6b,qwen3-1.7b")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", default="1", help="comma-separated batch sizes")
    ap.add_argument("--verify-cost", action="store_true", help="also time t(k)/t(0) for k = 0..16")
    args = ap.parse_args()
    res = measure(args.device, args.shapes.split(","), args.tokens, args.repeats,
                  tuple(int(b) for b in args.batch.split(",")), args.verify_cost)
    path = write_result(f"shapes_{res['device'].split()[0].lower()}", {"env": environment(), **res})
    print(f"{table(res)}\n\nwrote {path}")


if __name__ == "__main__":
    main()
