"""The README's curl and openai examples, executed verbatim against a real server on the
default model, and against `kakeya cluster` with 2 replicas (only the port is changed to a free one);
every curl block of docs/ too, where any 4xx/5xx fails it."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from http_server import LiveServer
from inference_engine.config import EngineConfig, ServerConfig
from inference_engine.engine.async_engine import AsyncEngine
from inference_engine.engine.llm import LLM
from inference_engine.http.app import ServerState, create_app

README = (Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```(bash|python)\n(.*?)```", README, re.S)
CURLS = [code for lang, code in BLOCKS if lang == "bash" and code.lstrip().startswith("curl")]
PYTHON = [code for lang, code in BLOCKS if lang == "python" and "OpenAI(" in code]
DOCS = Path(__file__).parents[1] / "docs"
DOC_CURLS = [(path.name, code) for path in sorted(DOCS.glob("*.md"))
             for lang, code in re.findall(r"```(bash|sh)\n(.*?)```", path.read_text(), re.S)
             if lang and code.lstrip().startswith("curl")]


@pytest.fixture(scope="module", params=["serve", pytest.param("cluster", marks=pytest.mark.ray)])
def server(request, smol_loaded):
    if request.param == "cluster":  # the same examples, unchanged, through `kakeya cluster --replicas 2`
        from inference_engine.config import ModelConfig
        from ray_cluster import cluster_serving

        with cluster_serving(ModelConfig(device="cpu", dtype="float32"), EngineConfig()) as running:
            yield running
        return
    engine = AsyncEngine(LLM(smol_loaded, EngineConfig()))
    with LiveServer(create_app(ServerState(ServerConfig(), engine))) as live:
        yield live
    engine.shutdown()


def _here(code: str, live) -> str:
    return code.replace("127.0.0.1:8000", f"127.0.0.1:{live.port}")


@pytest.mark.real_model
def test_readme_has_the_examples():
    assert len(CURLS) == 4 and len(PYTHON) == 1
    assert "bash scripts/serve.sh" in README and "bash scripts/test.sh" in README


@pytest.mark.real_model
@pytest.mark.parametrize("index", range(4))
def test_readme_curl_examples(server, index):
    out = subprocess.run(["bash", "-c", _here(CURLS[index], server)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if '"stream": true' in CURLS[index]:
        events = [line[6:] for line in out.stdout.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["completion_tokens"] > 0
    elif "X-Session-Id" in CURLS[index]:
        reply, _, info = out.stdout.partition("}{")
        assert "Paris" in json.loads(reply + "}")["choices"][0]["message"]["content"]
        assert json.loads("{" + info)["kv_cached_tokens"] > 0
    elif "/v1/models" in CURLS[index]:
        assert json.loads(out.stdout)["data"][0]["id"] == "SmolLM2-135M-Instruct"
    else:
        assert "Paris" in json.loads(out.stdout)["choices"][0]["message"]["content"]


@pytest.mark.real_model
def test_docs_have_curl_examples_and_only_for_this_host():
    assert DOC_CURLS and all("127.0.0.1:8000" in code and "localhost" not in code for _, code in DOC_CURLS)


@pytest.mark.real_model
@pytest.mark.parametrize("index", range(len(DOC_CURLS)), ids=[f"{name}-{i}" for i, (name, _) in enumerate(DOC_CURLS)])
def test_docs_curl_examples(server, index):
    code = _here(DOC_CURLS[index][1], server).replace("curl -s ", "curl -sS --fail-with-body ")
    out = subprocess.run(["bash", "-ec", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.real_model
def test_readme_openai_example(server, capsys):
    exec(compile(_here(PYTHON[0], server), "README.md", "exec"), {})
    assert "Paris" in capsys.readouterr().out
