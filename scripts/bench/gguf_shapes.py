"""Issue 24 (6): the default step and llama.cpp on the same Q4_0 GGUF at the sizes users run.

Random-weight Qwen3 at the 0.6B and 1.7B shapes (the real Qwen3 tokenizer from tests/fixtures),
written to GGUF by llama.cpp's own converter (`convert_hf_to_gguf.py` from the vendored llama.cpp
of the llama-cpp-python sdist, fetched from PyPI once into ~/.cache/kakeya) and quantized to Q4_0
by its own quantizer (`llama_model_quantize` through llama-cpp-python). Kakeya loads the same file
with its defaults (`--quantization auto` → the file's blocks on the native step) in a subprocess,
so each side's peak RSS is its own. Greedy, ignore eos, batch 1 (Kakeya also batch 4); tok/s
with prefill included and excluded.

    .venv/bin/python scripts/bench/gguf_shapes.py --shapes 0.6B,1.7B --prompt 128 --tokens 64
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, write_result  # noqa: E402
from llama_peer import LlamaCppPeer, missing_reason, venv_python  # noqa: E402
from vs_llama import peak_rss_mb  # noqa: E402

from inference_engine.models.gguf_cache import default_cache_dir  # noqa: E402

SHAPES = {  # Qwen3's published configurations (tied embeddings at both sizes)
    "0.6B": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128),
    "1.7B": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128),
}
SDIST = "llama_cpp_python-0.3.36"
CACHE = default_cache_dir() / "shapes"


def converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py (and the gguf-py it imports), from the PyPI sdist."""
    root = CACHE / SDIST / "vendor" / "llama.cpp"
    if not (root / "convert_hf_to_gguf.py").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(venv_python()), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={SDIST.rsplit('-', 1)[1]}", "-d", str(CACHE)], check=True)
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        with tarfile.open(CACHE / f"{SDIST}.tar.gz") as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(f"{SDIST}/vendor/llama.cpp/") and m.name.split("vendor/llama.cpp/", 1)[1].startswith(wanted)]
            tar.extractall(CACHE, members=members, filter="data")
    return root


def build_gguf(shape: str) -> Path:
    """<cache>/<shape>/model-Q4_0.gguf, built once."""
    out = CACHE / shape
    q4 = out / "model-Q4_0.gguf"
    if q4.exists():
        return q4
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    hf, f16 = out / "hf", out / "model-F16.gguf"
    tok = out / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    src = ROOT / "tests" / "fixtures" / "qwen3-tokenizer"
    with gzip.open(src / "tokenizer.json.gz", "rb") as f, open(tok / "tokenizer.json", "wb") as g:
        shutil.copyfileobj(f, g)
    shutil.copy(src / "tokenizer_config.json", tok)
    config = Qwen3Config(vocab_size=151936, max_position_embeddings=40960, tie_word_embeddings=True,
                         eos_token_id=151645, bos_token_id=None, torch_dtype="bfloat16", **SHAPES[shape])
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).to(torch.bfloat16).save_pretrained(hf)
    AutoTokenizer.from_pretrained(tok).save_pretrained(hf)
    root = converter()
    env = dict(os.environ, PYTHONPATH=f"{root / 'gguf-py'}:{root}")
    subprocess.run([sys.executable, str(root / "convert_hf_to_gguf.py"), str(hf), "--outfile", str(f16), "--outtype", "f16"],
                   check=True, env=env)
    quantize = ("import ctypes, sys, llama_cpp; p = llama_cpp.llama_model_quantize_default_params(); "
                "p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0; p.nthread = 2; "
                "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))")
    subprocess.run([str(venv_python()), "-c", quantize, str(f16), str(q4)], check=True)
    shutil.rmtree(hf)
    f16.unlink()
    return q4


KAKEYA = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from inference_engine.cli import build_parser, engine_config, model_config
from inference_engine.engine.llm import LLM
from inference_engine.models import load_model
from inference_engine.types import SamplingParams, SpeculativeParams, Submission
path, prompt, tokens = sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
serve = build_parser().parse_args(["serve", "--model", path])
t0 = time.perf_counter()
loaded = load_model(model_config(serve))
load_s = time.perf_counter() - t0
llm = LLM(loaded, engine_config(serve))
sp, plain = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True), SpeculativeParams("none", 0)
shifted = lambda i: [(t + 7 * i) % 150000 + 100 for t in prompt]  # a prompt sharing no prefix: no cache hit
llm.generate(shifted(99), SamplingParams(max_tokens=8, ignore_eos=True), plain)  # warm-up
runs = []
for i in range(2):
    t0 = time.perf_counter()
    out = llm.generate(shifted(i + 1), sp, plain)
    runs.append({"total_s": time.perf_counter() - t0, "decode_s": out.timings.decode, "tokens": len(out.token_ids)})
reqs = [llm.core.add_request(Submission(shifted(10 + i), sp, plain)) for i in range(4)]
t0 = time.perf_counter()
while not all(r.finished for r in reqs):
    llm.core.step()
batch4 = sum(len(r.output_ids) for r in reqs) / (time.perf_counter() - t0)
rss = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"runs": runs, "batch4_tok_s": batch4, "peak_rss_mb": rss, "load_s": load_s, "ids": out.token_ids,
                  "weights": loaded.info.quantization, "path": llm.core.verifier.path}))
"""


def measure(shape: str, q4: Path, prompt_len: int, tokens: int) -> dict:
    prompt = [(i * 7919) % 150000 + 100 for i in range(prompt_len)]
    for _ in range(2):  # the first start converts the file (transformers dequantizes it once): measure the second
        proc = subprocess.run([sys.executable, "-c", KAKEYA, str(ROOT), str(q4), json.dumps(prompt), str(tokens)],
                              capture_output=True, text=True, check=True)
    kakeya = json.loads(proc.stdout.strip().splitlines()[-1])
    best = min(kakeya["runs"], key=lambda r: r["total_s"])
    prompt = [(t + 14) % 150000 + 100 for t in prompt]  # what Kakeya's last timed run decoded
    peer = LlamaCppPeer(q4)
    peer.generate(prompt, 8, fresh=True)  # warm-up
    ll_total = min(peer.generate(prompt, tokens, fresh=True)[1] for _ in range(2))
    ll_prefill = min(peer.generate(prompt, 1, fresh=True)[1] for _ in range(2))
    ll_ids, _ = peer.generate(prompt, tokens, fresh=True)
    ll_rss = peak_rss_mb(peer.proc.pid)
    peer.close()
    k_incl, l_incl = tokens / best["total_s"], tokens / ll_total
    k_excl, l_excl = (tokens - 1) / best["decode_s"], (tokens - 1) / max(ll_total - ll_prefill, 1e-9)
    return {"shape": shape, "file_mb": q4.stat().st_size / 1e6, "prompt_tokens": prompt_len, "tokens": tokens,
            "kakeya": {"tok_s_incl_prefill": k_incl, "tok_s_excl_prefill": k_excl, "batch4_tok_s": kakeya["batch4_tok_s"],
                       "peak_rss_mb": kakeya["peak_rss_mb"], "load_s": kakeya["load_s"], "weights": kakeya["weights"],
                       "path": kakeya["path"]},
            "llama_cpp": {"tok_s_incl_prefill": l_incl, "tok_s_excl_prefill": l_excl, "peak_rss_mb": ll_rss},
            "ratio_incl": k_incl / l_incl, "ratio_excl": k_excl / l_excl,
            "same_greedy_tokens": sum(a == b for a, b in zip(kakeya["ids"], ll_ids))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="0.6B,1.7B")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", default="gguf_shapes")
    args = ap.parse_args()
    if missing_reason():
        sys.exit(missing_reason())
    rows = []
    for shape in args.shapes.split(","):
        t0 = time.perf_counter()
        q4 = build_gguf(shape)
        print(f"{shape}: {q4} ({time.perf_counter() - t0:.0f} s to build)", flush=True)
        rows.append(measure(shape, q4, args.prompt, args.tokens))
        print(json.dumps(rows[-1]), flush=True)
    write_result(args.out, {"rows": rows, "environment": environment(), "args": vars(args)})


if __name__ == "__main__":
    main()
