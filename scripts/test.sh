#!/usr/bin/env bash
# The Linux unit gate: set up .venv (idempotent), then run every test except the
# real-accelerator integration ones, with line coverage failing under 85 %.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_agents.sh  # Codex CLI and Claude Code for tests/test_agent_clis.py (pinned, cached)
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 KAKEYA_REQUIRE_AGENT_CLIS=1
.venv/bin/python -m coverage erase
.venv/bin/python -m coverage run -m pytest -q --durations=15 "$@"
.venv/bin/python -m coverage report
# The TypeScript SDK (@kakeya/runtime): 100 % coverage against a real `kakeya serve` (whole gate only)
if [ $# -eq 0 ]; then
  (cd sdks/typescript && npm ci --no-audit --no-fund --loglevel=error && npm test)
fi
