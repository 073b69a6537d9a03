"""Issue 13's accelerator check: correctness first, then speed, in one run (scripts/gpu_check.sh).

Correctness (a tiny random Qwen3 in float32 on the device, greedy, eos ignored): the fast path
without CUDA graphs == the transformers forward; with them (the default on CUDA) == the same, past
a KV buffer's growth; speculation == plain for ngram (drafts rejected), suffix and a draft model
equal to the verifier (drafts accepted); rows decoded in one batch == each alone. Speed: the
random-weight Qwen3 shapes of shapes.py in bfloat16 at batch 1 and 8 (CUDA graphs, fast path
without them, eager, HF generate, each as a fraction of the bandwidth bound) and the verify-cost
curve. Writes scripts/bench/results/gpu_check.json (`kakeya bench --render` puts it in
docs/benchmarks.md) and exits 1 if a correctness check failed.

    python3 scripts/bench/gpu_check.py --device cuda             # on a CUDA machine
    python3 scripts/bench/gpu_check.py --device cpu --quick      # the smoke run the CPU gate makes
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes  # noqa: E402
from common import environment, write_result  # noqa: E402

from inference_engine.config import EngineConfig  # noqa: E402
from inference_engine.engine.core import EngineCore  # noqa: E402
from inference_engine.models.device import resolve_device  # noqa: E402
from inference_engine.types import SamplingParams, SpeculativeParams, Submission  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, max_position_embeddings=1024, initializer_range=0.2, tie_word_embeddings=True)
PROMPT = [151644, 872, 198, 9707, 11, 1879, 30, 151645, 198, 151644, 77091, 198]
PLAIN = SpeculativeParams("none", 0)


def decode(model, prompts: list[list[int]], n: int, spec=PLAIN, draft=None, **cfg):
    """Greedy outputs of `prompts` admitted together, and the engine (for its path and stats)."""
    core = EngineCore(model, [], EngineConfig(prefix_cache=False, **cfg), draft_model=draft)
    reqs = [core.add_request(Submission(p, SamplingParams(max_tokens=n, ignore_eos=True), spec)) for p in prompts]
    while core.has_work:
        core.step()
    return [r.output_ids for r in reqs], core, reqs


def correctness(device: torch.device) -> list[dict]:
    model = shapes.build("tiny", device, torch.float32, **TINY)
    graphs = device.type == "cuda"
    checks = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)

    eager = decode(model, [PROMPT], 80, fast_path=False)[0][0]
    check("diverse reference", len(set(eager)) > 20, f"{len(set(eager))} distinct tokens in 80")
    fast = decode(model, [PROMPT], 80, cuda_graphs=False)[0][0]
    check("fast == eager (float32)", fast == eager)
    out, core, _ = decode(model, [PROMPT], 80)
    g = core.verifier.fast.graphs
    check("default path == eager (float32)", out[0] == eager,
          f"path {core.verifier.path}" + (f", {g.captures} graphs, {g.calls} replays" if g else ""))
    if graphs:
        check("CUDA graphs live", core.verifier.path == "graphs" and g.calls >= 70 and g.captures >= 2)
    repetitive = PROMPT + [9707, 11, 1879, 30] * 6
    ref = decode(model, [repetitive], 40, fast_path=False)[0][0]
    for name, prompt, reference, spec, draft in (("ngram", repetitive, ref, SpeculativeParams("ngram", 6), None),
                                                 ("suffix", PROMPT, eager, SpeculativeParams("suffix", 4), None),
                                                 ("draft", PROMPT, eager, SpeculativeParams("draft", 4), model)):
        n = len(reference)
        if name == "suffix":  # the index must hold the text first: a plain run on the same engine
            core = EngineCore(model, [], EngineConfig(prefix_cache=False))
            for sp in (PLAIN, spec):
                req = core.add_request(Submission(prompt, SamplingParams(max_tokens=n, ignore_eos=True), sp))
                while core.has_work:
                    core.step()
            got, stats = req.output_ids, req.stats
        else:
            outs, _, reqs = decode(model, [prompt], n, spec, draft)
            got, stats = outs[0], reqs[0].stats
        check(f"{name} == plain (float32)", got == reference,
              f"drafted {stats.draft_tokens}, accepted {stats.accepted_tokens}")
    prompts = [PROMPT, PROMPT[:5], PROMPT + [9707, 11, 1879]]
    alone = [decode(model, [p], 24, fast_path=False)[0][0] for p in prompts]
    check("batched == alone (float32)", decode(model, prompts, 24)[0] == alone)
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="correctness and one small shape only (the CPU smoke run)")
    ap.add_argument("--shapes", default="qwen3-0.6b,qwen3-1.7b,qwen3-8b")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", default="gpu_check")
    args = ap.parse_args()
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    res = {"env": environment(), "device": shapes.device_name(device), "checks": correctness(device)}
    if args.quick:
        shapes.SHAPES["qwen3-micro"] = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, head_dim=64, tie_word_embeddings=True, vocab_size=4096)
        speed = shapes.measure(args.device, ["qwen3-micro"], 8, 1, (1, 2), costs=True)
    else:
        speed = shapes.measure(args.device, args.shapes.split(","), args.tokens, 2, (1, 8), costs=True)
    res.update(speed=speed, runtime_s=time.perf_counter() - t0)
    path = write_result(args.out, res)
    failed = [c["check"] for c in res["checks"] if not c["ok"]]
    print(f"\n{shapes.table(speed)}\n\nwrote {path}; {len(res['checks']) - len(failed)} of {len(res['checks'])} checks "
          f"passed{': FAILED ' + ', '.join(failed) if failed else ''}; {res['runtime_s']:.0f} s")
    sys.exit(1 if failed else 0)


def markdown(res: dict) -> str:
    """The docs/benchmarks.md section for a gpu_check result."""
    lines = [f"{res['device']}, torch {res['env']['torch']}, {res['env']['date']}; {res['runtime_s']:.0f} s.", "",
             "| correctness check | result |", "|---|---|"]
    lines += [f"| {c['check']} | {'pass' if c['ok'] else '**FAIL**'} {c['detail']} |" for c in res["checks"]]
    return "\n".join(lines + ["", shapes.table(res["speed"])])


if __name__ == "__main__":
    main()
