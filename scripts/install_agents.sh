#!/usr/bin/env bash
# The coding-agent CLIs the gate drives (Codex CLI, Claude Code), pinned in agents/package-lock.json,
# into agents/node_modules (~830 MB, ~10 s from npm; skipped when the pinned versions are there).
# Both are native binaries wrapped by npm packages; tests/test_agent_clis.py runs them against Kakeya.
set -euo pipefail
cd "$(dirname "$0")/../agents"
bin=node_modules/.bin
if [ -x "$bin/codex" ] && [ -x "$bin/claude" ] \
   && "$bin/codex" --version 2>/dev/null | grep -q "$(node -p 'require("./package.json").dependencies["@openai/codex"]')" \
   && "$bin/claude" --version 2>/dev/null | grep -q "$(node -p 'require("./package.json").dependencies["@anthropic-ai/claude-code"]')"; then
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
"$bin/codex" --version && "$bin/claude" --version
