"""The coding-agent CLIs people point at a local server, run for real against Kakeya with the
configuration docs/agents.md gives: Codex CLI over /v1/responses (`codex exec`), Claude Code over
/v1/messages (`claude -p`). A protocol round trip, not a task: the CLI connects, streams, prints the
model's reply and exits 0, and the token counts it reports are the ones the server counted.

Neither CLI sends a temperature and Codex sends no output cap, so the server runs with the defaults
a user sets for them (`--temperature 0 --max-tokens 64`): greedy, and bounded. The CLIs come from
scripts/install_agents.sh (pinned in agents/package-lock.json); the gate sets
KAKEYA_REQUIRE_AGENT_CLIS=1 so that a missing install fails instead of skipping."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from http_server import serving
from inference_engine.config import EngineConfig

BIN = Path(__file__).resolve().parents[1] / "agents" / "node_modules" / ".bin"
INSTALLED = (BIN / "codex").exists() and (BIN / "claude").exists()
if not INSTALLED and not os.environ.get("KAKEYA_REQUIRE_AGENT_CLIS"):
    pytest.skip("the agent CLIs are not installed: bash scripts/install_agents.sh", allow_module_level=True)


@pytest.fixture(scope="module")
def live(smol_loaded):
    assert INSTALLED, "KAKEYA_REQUIRE_AGENT_CLIS is set but agents/node_modules lacks codex or claude"
    with serving(smol_loaded, EngineConfig(default_temperature=0.0, default_max_tokens=64)) as (server, _):
        yield server


def _counters(url: str) -> dict[str, float]:
    """Prometheus samples by their full name with labels (counters only grow)."""
    out = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _moved(before: dict, after: dict) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0) and k.split("{")[0].endswith("_total")}


def _requests(moved: dict, endpoint: str) -> float:
    return sum(v for k, v in moved.items() if k.startswith("kakeya_requests_total{") and f'endpoint="{endpoint}"' in k)


def _run(cmd: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def test_codex_exec_one_turn_over_responses(live, smol_loaded, tmp_path):
    home = tmp_path / "codex"
    home.mkdir()
    (home / "config.toml").write_text(f"""\
model = "{smol_loaded.info.name}"
model_provider = "kakeya"
web_search = "disabled"

[agents]
enabled = false

[model_providers.kakeya]
name = "Kakeya"
base_url = "{live.url}/v1"
wire_api = "responses"
""")
    env = dict(os.environ, CODEX_HOME=str(home), HOME=str(tmp_path), NO_COLOR="1")
    before = _counters(live.url)
    r = _run([str(BIN / "codex"), "exec", "--json", "--skip-git-repo-check", "Say hello."], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    replies = [e["item"]["text"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"]
    usage = next(e["usage"] for e in events if e["type"] == "turn.completed")
    moved = _moved(before, _counters(live.url))
    assert len(replies) == 1 and replies[0].strip()
    # one streamed /v1/responses request, and the CLI's numbers are the server's
    assert _requests(moved, "/v1/responses") == 1, moved
    assert usage["output_tokens"] == moved["kakeya_generation_tokens_total"]
    assert usage["input_tokens"] == moved["kakeya_prompt_tokens_total"]


def test_claude_code_print_one_turn_over_messages(live, smol_loaded, tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), ANTHROPIC_BASE_URL=live.url, ANTHROPIC_API_KEY="sk-local",
               ANTHROPIC_MODEL=smol_loaded.info.name, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
               CLAUDE_CODE_MAX_OUTPUT_TOKENS="64")
    before = _counters(live.url)
    r = _run([str(BIN / "claude"), "-p", "--bare", "--tools", "Read,Bash", "--max-turns", "3", "--system-prompt",
              "Answer briefly.", "--output-format", "json", "Say hello."], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    moved = _moved(before, _counters(live.url))
    assert out["is_error"] is False and out["result"].strip() and out["num_turns"] == 1
    assert out["stop_reason"] in ("end_turn", "max_tokens")
    assert _requests(moved, "/v1/messages") == 1, moved
    assert out["usage"]["output_tokens"] == moved["kakeya_generation_tokens_total"]
    assert out["usage"]["input_tokens"] + out["usage"]["cache_read_input_tokens"] == moved["kakeya_prompt_tokens_total"]
