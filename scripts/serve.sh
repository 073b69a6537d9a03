#!/usr/bin/env bash
# Kakeya's main job: the OpenAI-compatible server on the embedded default model
# (http://127.0.0.1:8000/v1). Sets up .venv first (idempotent). Options pass through,
# e.g. `bash scripts/serve.sh --port 9000 --api-key secret`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/kakeya serve "$@"
