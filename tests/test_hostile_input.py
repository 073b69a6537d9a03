"""The hostile-input table (inference_engine/http/screen.py), one request per row against a real
uvicorn server on the tiny Qwen3: each is a 400 (413 for the body) in the OpenAI envelope naming
the field, and afterwards the server still serves, with no session leaked."""
from __future__ import annotations

import json

import httpx
import pytest

from http_server import serving
from inference_engine.http.screen import MAX_DEPTH, RULES

USER = {"role": "user", "content": "hi"}
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def live(tiny_loaded):
    with serving(tiny_loaded, max_body_bytes=LIMIT) as (server, engine):
        yield server, engine


def _nested(depth: int):
    value = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _post(live, raw: str, **headers) -> httpx.Response:
    return httpx.post(live[0].url + "/v1/chat/completions", content=raw.encode("utf-8", "surrogatepass"),
                      headers={"content-type": "application/json", **headers}, timeout=60)


def _tool(parameters) -> dict:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


# (rule, raw JSON body or dict, the param the 400 must name)
CASES = [
    ("depth", {"messages": [USER], "tools": [_tool(_nested(500))]}, "tools.0.function.parameters" + ".a" * 28),
    ("depth", {"messages": [USER], "metadata": _nested(MAX_DEPTH + 1)}, "metadata" + ".a" * (MAX_DEPTH - 1)),
    ("utf8", '{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages.0.content"),
    ("utf8", {"messages": [USER], "tools": [_tool({"type": "object", "properties": {"\ud800": {}}})]},
     "tools.0.function.parameters.properties.\\ud800"),  # escaped in the error
    ("finite", '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature"),
    ("finite", '{"messages": [{"role": "user", "content": "hi"}], "temperature": 1, "logit_bias": {"5": Infinity}}',
     "logit_bias.5"),
    ("finite", '{"messages": [{"role": "user", "content": "hi"}], "top_p": 1e-310}', "top_p"),
    ("int_range", '{"messages": [{"role": "user", "content": "hi"}], "top_k": 1' + "0" * 30 + "}", "top_k"),
]


@pytest.mark.parametrize("rule, body, param", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_hostile_body_is_400_naming_the_field(live, rule, body, param):
    raw = body if isinstance(body, str) else json.dumps(body)
    r = _post(live, raw)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


@pytest.mark.parametrize("sid", ["", "x" * 129, "a b", "ü"])
def test_bad_session_ids_are_400_and_create_nothing(live, sid):
    before = live[1].num_sessions
    body = json.dumps({"messages": [USER], "max_tokens": 1})
    r = _post(live, body, **{"x-session-id": sid.encode("utf-8")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Session-Id", r.text
    r = _post(live, json.dumps({"messages": [USER], "max_tokens": 1, "session_id": sid}))
    assert r.status_code == 400 and r.json()["error"]["param"] == "session_id", r.text
    assert live[1].num_sessions == before


def test_chunked_body_over_the_limit_is_413(live):
    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(2 * LIMIT // 1024):
            yield b"a" * 1024
        yield b'"}]}'

    r = httpx.post(live[0].url + "/v1/chat/completions", content=chunks(), timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"], r.text
    assert "content-length" not in r.request.headers  # it really was sent chunked


def test_still_serving_after_the_table(live):
    """After every row above (module order), the engine thread is alive and answers."""
    assert live[1].alive
    r = _post(live, json.dumps({"messages": [USER], "max_tokens": 2}))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_every_rule_has_a_case():
    covered = {c[0] for c in CASES} | {"session_id", "body"}
    assert covered == {r.name for r in RULES}
