#!/usr/bin/env bash
# Issue 13's GPU check, one command on a CUDA machine (a few minutes on an H100/H200; budget 8):
# correctness on the device (fast path, CUDA graphs, speculation, batching: float32, tiny random
# Qwen3), then bf16 decode speed of random-weight Qwen3-0.6B/1.7B/8B shapes at batch 1 and 8
# against the bandwidth bound, and the verify-cost curve (scripts/bench/gpu_check.py).
# No install, no downloads: it runs with the Python that holds a CUDA torch and transformers
# (PYTHON=..., default python3; the repo's .venv holds a CPU-only torch). Extra arguments go to
# gpu_check.py. Result: scripts/bench/results/gpu_check.json, copied to $OUT when that is set;
# `kakeya bench --render scripts/bench/results/gpu_check.json` puts it in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__);
assert torch.cuda.is_available(), "no CUDA device visible to this torch"; print(torch.cuda.get_device_name())'
status=0
"$PY" scripts/bench/gpu_check.py --device cuda "$@" 2>&1 | tee /tmp/gpu_check.log || status=$?
if [ -n "${OUT:-}" ]; then
  cp scripts/bench/results/gpu_check.json /tmp/gpu_check.log "$OUT/" 2>/dev/null || true
fi
exit "$status"
