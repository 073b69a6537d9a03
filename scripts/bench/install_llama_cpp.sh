#!/usr/bin/env bash
# Build llama-cpp-python into its own cached venv, the llama.cpp peer of `kakeya bench`.
# It compiles llama.cpp from the PyPI sdist (~20-35 min on 2 cores), so it is opt-in
# and kept apart from the project venv; the bench skips the peer while this is absent.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
VENV="${KAKEYA_LLAMA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kakeya/llama-cpp-venv}"
if "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
  echo "llama-cpp-python $VERSION already in $VENV"; exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# Native CPU flags, as a local llama.cpp build has; no multimodal (llava) library.
CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" \
  "$VENV/bin/pip" install "llama-cpp-python==$VERSION"
echo "llama-cpp-python $VERSION installed in $VENV"
