"""Bad input gets a 4xx in the API's error shape (OpenAI's envelope; Anthropic's under
/v1/messages), never a 5xx: a schemathesis pass over the server's own /openapi.json (real
uvicorn on 127.0.0.1, tiny real Qwen3), and a table of OpenAI's per-role message rules."""
from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from http_server import LiveServer
from inference_engine.config import EngineConfig, ServerConfig
from inference_engine.engine.async_engine import AsyncEngine
from inference_engine.engine.llm import LLM
from inference_engine.http.app import ServerState, create_app

# Generated bodies get at most this many new tokens so the pass stays short on 2 cores;
# values past any context length are kept (they must be refused with a 400, not generated).
MAX_NEW = 8
CONTEXT_REFUSED = 4096


@pytest.fixture(scope="module")
def live(tiny_loaded):
    engine = AsyncEngine(LLM(tiny_loaded, EngineConfig()))
    with LiveServer(create_app(ServerState(ServerConfig(), engine))) as server:
        yield server
    engine.shutdown()


def _bounded(body):
    """Caps generation length in every generated body without changing its validity."""
    if not isinstance(body, dict):
        return body
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and MAX_NEW < v < CONTEXT_REFUSED:
            body[key] = MAX_NEW
    if ("messages" in body or "prompt" in body) and body.get("max_tokens") is None:
        # Absent or null max_tokens means "up to the context length" (~1000 tokens on the tiny model).
        body["max_tokens"] = MAX_NEW
    if "input" in body and body.get("max_output_tokens") is None:  # /v1/responses
        body["max_output_tokens"] = MAX_NEW
    return body


def _load_schema():
    """The app's own OpenAPI document, built at collection time (the routes need no model); the cases
    go to the live server, whose /openapi.json is checked to be this same document."""
    config = schemathesis.Config.from_dict({
        "seed": 11,  # the gate's result must not vary run to run
        # mode all: schema-valid and schema-violating bodies; no-shrink: a failure is reported at
        # once (with its curl reproducer), not after minutes of shrinking.
        "generation": {"mode": "all", "max-examples": 25, "no-shrink": True},
        "phases": {"stateful": {"enabled": False}},  # the schema declares no links between operations
        "output": {"sanitization": {"enabled": False}},  # it hides max_tokens/session_id ("token", "session")
    })
    return schemathesis.openapi.from_dict(create_app(ServerState(ServerConfig())).openapi(), config=config)


schema = _load_schema()


def _content_type(response) -> str:
    value = response.headers.get("content-type", "")  # schemathesis keeps a list per header; httpx a str
    return value[0] if isinstance(value, list) else value


def _assert_error(response, path: str) -> None:
    """Every 4xx carries OpenAI's {"error": {"message", "type", "param", "code"}}, or under
    /v1/messages Anthropic's {"type": "error", "error": {"type", "message"}}, with a message and a type."""
    assert _content_type(response).startswith("application/json"), response.text[:200]
    body = response.json()
    err = body["error"]
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and set(err) == {"type", "message"}, body
    else:
        assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str), err


def _assert_no_inband_server_error(response) -> None:
    """A stream whose headers said 200 may still fail in-band: an SSE `error` event."""
    if not _content_type(response).startswith("text/event-stream"):
        return
    lines = response.text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "event: error":
            data = next(ln for ln in lines[i + 1:] if ln.startswith("data:"))
            pytest.fail(f"in-band error in a 200 stream: {data}")


@schema.parametrize()
@settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_fuzz_no_5xx_and_openai_errors(case, live):
    case.body = _bounded(case.body)  # here, not in a map_body hook: hooks skip the coverage phase
    # A per-request timeout bounds each example instead of hypothesis' deadline (noisy shared CPUs).
    response = case.call(base_url=live.url, timeout=60)
    # the document describes the real statuses and bodies (http/openapi.py), so hold the server to it
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                             response_schema_conformance])
    if 400 <= response.status_code < 500:
        _assert_error(response, case.path)
    elif response.status_code == 200:
        _assert_no_inband_server_error(response)


def test_top_p_below_float32_range_keeps_the_top_token(live):
    """Found by the fuzz pass: a top_p that rounds to 0 in float32 dropped every token (a 500).
    1e-300 is a normal float64 that float32 rounds to 0; a subnormal one is refused (screen.py)."""
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "top_p": 1e-300, "temperature": 1}
    assert httpx.post(live.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
    r = httpx.post(live.url + "/v1/chat/completions", json={**body, "top_p": 5e-324}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_p"


USER = {"role": "user", "content": "hi"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    "messages,param",
    [
        ([{"role": "user"}], "messages.0.content"),
        ([{"role": "user", "content": None}], "messages.0.content"),
        ([{"role": "system"}, USER], "messages.0.content"),
        ([{"role": "developer", "content": None}, USER], "messages.0.content"),
        ([USER, {"role": "assistant"}], "messages.1.content"),
        ([USER, {"role": "assistant", "content": None, "tool_calls": []}], "messages.1.content"),
        ([USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "4"}], "messages.2.tool_call_id"),
        ([USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "call_1"}], "messages.2.content"),
        ([{"role": "user", "content": []}], "messages.0.content"),
    ],
)
def test_message_without_required_field_is_400(live, messages, param):
    r = httpx.post(live.url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 2}, timeout=30)
    assert r.status_code == 400, r.text
    _assert_error(r, "/v1/chat/completions")
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and param in err["message"]


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": ""}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        [{"role": "developer", "content": "Be brief."}, USER],
        # An assistant turn that only calls a tool may omit content (or send null), as OpenAI allows.
        [USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "call_1", "content": "4"}],
        [USER, {"role": "assistant", "content": None, "tool_calls": [CALL]},
         {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "4"}]}],
        [USER, {"role": "assistant", "content": "hello"}, USER],
    ],
)
def test_messages_that_openai_accepts_are_served(live, messages):
    r = httpx.post(live.url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 2}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize(
    "extra,param",
    [
        # Each of these reached the chat template or the sampler and came back as a 500 before.
        ({"messages": [USER, {"role": "assistant", "tool_calls": [{}]}]}, "messages.1.tool_calls.0.id"),
        ({"messages": [USER, {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}]},
         "messages.1.tool_calls.0.function.arguments"),
        ({"messages": [USER], "tools": [{}]}, "tools.0.function"),
        ({"messages": [USER], "tools": [{"type": "function", "function": {}}]}, "tools.0.function.name"),
        ({"messages": [USER], "logit_bias": {"1": 1e9}}, "logit_bias.1"),
        # A union's member tags (`str`, `list[str]`) are not in the param; the deepest error is.
        ({"messages": [USER], "stop": [1]}, "stop.0"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages.0.content.0.type"),
    ],
)
def test_malformed_nested_fields_are_400(live, extra, param):
    r = httpx.post(live.url + "/v1/chat/completions", json={"max_tokens": 2, **extra}, timeout=30)
    assert r.status_code == 400, r.text
    _assert_error(r, "/v1/chat/completions")
    assert r.json()["error"]["param"] == param


def test_fuzzed_schema_is_the_live_servers(live):
    assert httpx.get(live.url + "/openapi.json").json() == schema.raw_schema


def test_missing_content_code_matches_openai(live):
    r = httpx.post(live.url + "/v1/chat/completions", json={"messages": [{"role": "user"}]}, timeout=30)
    assert r.json()["error"]["code"] == "missing_required_parameter"
    health = json.loads(httpx.get(live.url + "/healthz").text)
    assert health["status"] == "ok" and health["decode_path"] == "fast"  # still serving, on the fast path
