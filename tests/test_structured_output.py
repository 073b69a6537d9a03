"""Structured output (engine/grammar.py, llguidance): the output matches the grammar, greedy and
sampled, with every proposer; greedy speculation under a grammar equals plain decoding under the
same grammar (float32), with drafts both accepted and rejected; and through the real server the
official client's `chat.completions.parse` returns a parsed pydantic object."""
from __future__ import annotations

import json

import httpx
import llguidance
import openai
import pytest
from pydantic import BaseModel, Field

from http_server import openai_client, serving
from inference_engine.config import EngineConfig
from inference_engine.engine.llm import LLM
from inference_engine.errors import InvalidRequest
from inference_engine.types import SamplingParams, SpeculativeParams

PROMPT = [151644, 872, 198, 9707, 11, 1879, 30, 151645, 198, 151644, 77091, 198]
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "tags", "age"], "properties": {
    "name": {"type": "string", "maxLength": 24},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    "age": {"type": "integer", "minimum": -999, "maximum": 999}}}
GRAMMAR = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults={"whitespace_flexible": False})
METHODS = [("none", 0), ("ngram", 4), ("suffix", 4), ("draft", 4)]


def _valid(text: str) -> bool:
    obj = json.loads(text)
    return (set(obj) == {"name", "tags", "age"} and isinstance(obj["name"], str) and len(obj["name"]) <= 24
            and isinstance(obj["age"], int) and -999 <= obj["age"] <= 999 and isinstance(obj["tags"], list) and len(obj["tags"]) <= 3
            and all(isinstance(t, str) and len(t) <= 8 for t in obj["tags"]))


def _run(loaded, method, k, prompt=PROMPT, **sampling):
    llm = LLM(loaded, EngineConfig(prefix_cache=False), draft=loaded if method == "draft" else None)
    sp = SamplingParams(max_tokens=120, grammar=GRAMMAR, **sampling)
    if method == "suffix":  # the index holds the plain output first, so suffix drafts from it
        llm.generate(prompt, sp, SpeculativeParams("none", 0))
    return llm.generate(prompt, sp, SpeculativeParams(method, k))


def test_greedy_speculation_under_a_grammar_equals_plain(tiny_loaded):
    plain = _run(tiny_loaded, "none", 0)
    assert plain.finish_reason.value == "stop" and _valid(plain.text), plain.text
    drafted = accepted = 0
    repetitive = PROMPT + [4913, 606, 788, 330] * 4  # `{"name": "` repeated: n-gram drafts the grammar allows
    for prompt in (PROMPT, repetitive):
        ref = _run(tiny_loaded, "none", 0, prompt).token_ids
        for method, k in METHODS[1:]:
            out = _run(tiny_loaded, method, k, prompt)
            assert out.token_ids == ref, (method, prompt)
            drafted, accepted = drafted + out.spec.draft_tokens, accepted + out.spec.accepted_tokens
    assert 0 < accepted < drafted  # drafts were both accepted and rejected


def test_logprobs_under_a_grammar_match_the_tokens(tiny_loaded):
    """One logprob per emitted token, the same as plain decoding's, when a verify step's bonus token
    is cut because the grammar completed before it (suffix drafts of the whole plain answer)."""
    plain = _run(tiny_loaded, "none", 0, logprobs=2)
    assert len(plain.logprobs) == len(plain.token_ids)
    for method, k in METHODS[1:]:
        out = _run(tiny_loaded, method, k, logprobs=2)
        assert out.token_ids == plain.token_ids, method
        assert [lp.token_id for lp in out.logprobs] == out.token_ids, method
        assert [lp.logprob for lp in out.logprobs] == pytest.approx([lp.logprob for lp in plain.logprobs], abs=1e-4)


def test_forced_tokens_are_free_drafts(tiny_loaded):
    """With nothing from the proposer (no n-gram repeats in this prompt), the grammar's forced
    tokens — `{"name":"` and the like — are drafted, and the output still equals plain's."""
    plain = _run(tiny_loaded, "none", 0)
    out = _run(tiny_loaded, "ngram", 8)
    assert out.token_ids == plain.token_ids
    assert out.spec.draft_tokens >= 3 and out.spec.accepted_tokens >= 3 and out.spec.verify_steps < plain.spec.verify_steps


@pytest.mark.parametrize("method, k", METHODS)
def test_sampled_output_matches_the_schema(tiny_loaded, method, k):
    for seed in range(3):
        out = _run(tiny_loaded, method, k, temperature=1.0, seed=seed)
        assert out.finish_reason.value == "stop" and _valid(out.text), out.text


def test_a_grammar_that_does_not_compile_is_refused(tiny_llm):
    bad = llguidance.LLMatcher.grammar_from_json_schema({"type": "nonsense"})
    with pytest.raises(InvalidRequest) as e:
        tiny_llm.generate(PROMPT, SamplingParams(max_tokens=4, grammar=bad))
    assert e.value.param == "response_format" and not tiny_llm.core.has_work


class Person(BaseModel):
    name: str
    age: int


class Bounded(BaseModel):
    """For the random-weight model, which would otherwise write one string forever."""
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=150)


@pytest.fixture(scope="module")
def live(tiny_loaded):
    with serving(tiny_loaded) as (server, _):
        yield server


def test_openai_parse_with_a_pydantic_model(live):
    client = openai_client(live)
    r = client.chat.completions.parse(model=openai.NOT_GIVEN, response_format=Bounded, max_tokens=200, temperature=0,
                                      messages=[{"role": "user", "content": "Who are you?"}])
    assert isinstance(r.choices[0].message.parsed, Bounded) and r.choices[0].finish_reason == "stop"
    # the grammar did it: the same request without response_format is no such object
    free = client.chat.completions.create(model=openai.NOT_GIVEN, max_tokens=200, temperature=0,
                                          messages=[{"role": "user", "content": "Who are you?"}])
    with pytest.raises(ValueError):
        Bounded.model_validate_json(free.choices[0].message.content)


def test_json_schema_streamed(live):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "temperature": 0, "stream": True,
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}}
    r = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=60)
    chunks = [json.loads(e[6:]) for e in r.text.split("\n\n") if e.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert _valid(text) and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_bad_schema_is_400(live):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}
    r = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text


@pytest.mark.real_model
def test_default_model_parse(smol_loaded):
    """SmolLM2 (the default model) through the server: a parsed object that also says something."""
    with serving(smol_loaded) as (server, _):
        client = openai_client(server)
        r = client.chat.completions.parse(
            model=openai.NOT_GIVEN, response_format=Person, max_tokens=64, temperature=0,
            messages=[{"role": "user", "content": "Make up a person: give a name and an age as JSON."}])
        person = r.choices[0].message.parsed
        assert isinstance(person, Person) and r.choices[0].finish_reason == "stop" and person.name.strip()
        r = client.chat.completions.create(
            model=openai.NOT_GIVEN, response_format={"type": "json_object"}, max_tokens=256, temperature=0,
            messages=[{"role": "user", "content": "Give me a JSON object with the keys name and color for a cat."}])
        assert isinstance(json.loads(r.choices[0].message.content), dict)
