#!/usr/bin/env bash
# Kakeya's main job on the embedded default model: set up .venv (idempotent), then run it.
# Arguments pass through, e.g. `bash scripts/run.sh "Write a haiku about the sea."`.
set -euo pipefail
cd "$(dirname "$0")/.."
KAKEYA_EXTRAS=${KAKEYA_EXTRAS:-dev} bash scripts/setup.sh
exec .venv/bin/kakeya generate "$@"
