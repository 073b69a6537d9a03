"""Exact verifier logprobs (also under speculation), penalties and logit_bias, on the tiny Qwen3."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from inference_engine.config import EngineConfig
from inference_engine.engine.llm import LLM
from inference_engine.types import SamplingParams, SpeculativeParams
from test_lossless_models import (  # noqa: F401  (fixtures)
    CPU_LIKE, SMALL_PROMPT, fresh_llm, hf_greedy, run_steps, small_loaded, small_qwen3_dir,
)

PROMPT = [151644, 872, 198, 9707, 11, 1879, 11, 9707, 11]
PLAIN = SpeculativeParams("none", 0)


@pytest.fixture()
def tiny_llm(tiny_loaded) -> LLM:
    # The default method is auto: pin its cost curve so no test here depends on this CPU's timings.
    return LLM(tiny_loaded, EngineConfig(cost_curve=CPU_LIKE))


def test_logprobs_are_the_verifiers(tiny_llm):
    out = tiny_llm.generate(PROMPT, SamplingParams(max_tokens=6, ignore_eos=True, logprobs=3), PLAIN)
    assert [t.token_id for t in out.logprobs] == out.token_ids
    # recompute with one full forward over prompt + output
    model = tiny_llm.model
    with torch.inference_mode():
        logits = model(torch.tensor([PROMPT + out.token_ids])).logits[0, len(PROMPT) - 1 : -1].float()
    ref = logits.log_softmax(-1)
    for i, t in enumerate(out.logprobs):
        assert t.logprob == pytest.approx(float(ref[i, t.token_id]), abs=1e-4)
        top = ref[i].topk(3)  # the alternatives: transformers' three most likely, in order
        assert [a for a, _ in t.top] == top.indices.tolist() and t.top[0][0] == t.token_id
        assert [b for _, b in t.top] == pytest.approx(top.values.tolist(), abs=1e-4)


@pytest.mark.parametrize("method,k", [("ngram", 4), ("suffix", 8)])
def test_logprobs_unchanged_by_speculation(tiny_llm, method, k):
    sp = SamplingParams(max_tokens=12, ignore_eos=True, logprobs=2)
    tiny_llm.generate(PROMPT, sp, PLAIN)  # the suffix index learns this output: drafts get accepted
    plain = tiny_llm.generate(PROMPT, sp, PLAIN)
    spec = tiny_llm.generate(PROMPT, sp, SpeculativeParams(method, k))
    assert spec.token_ids == plain.token_ids and len(spec.logprobs) == len(plain.logprobs) == 12
    with torch.inference_mode():  # the reference: one transformers forward over prompt + output
        ref = tiny_llm.model(torch.tensor([PROMPT + spec.token_ids])).logits[0, len(PROMPT) - 1: -1].float()
    ref = ref.log_softmax(-1)
    for i, (a, b) in enumerate(zip(plain.logprobs, spec.logprobs)):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert b.logprob == pytest.approx(float(ref[i, b.token_id]), abs=1e-4)
        assert [x for x, _ in b.top] == ref[i].topk(2).indices.tolist()


def test_logprobs_off_by_default(tiny_llm):
    assert tiny_llm.generate(PROMPT, SamplingParams(max_tokens=3)).logprobs is None


def test_logit_bias_forces_a_token(tiny_llm):
    sp = SamplingParams(max_tokens=5, ignore_eos=True, logit_bias=((9707, 100.0),))
    for spec in (PLAIN, SpeculativeParams("ngram", 4)):
        assert tiny_llm.generate(PROMPT, sp, spec).token_ids == [9707] * 5


@pytest.mark.parametrize("kind", ["presence_penalty", "frequency_penalty"])
def test_penalties_change_output_and_stay_lossless(tiny_llm, kind):
    # Bias token 9707 to just win the first step (by 1.0): unpenalised it keeps coming back,
    # a 2.0 penalty on repeats pushes it down after its first use.
    v = tiny_llm.core.verifier
    first = v.forward(v.new_cache(), PROMPT, 1)[0]
    bias = ((9707, float(first.max() - first[9707]) + 1.0),)
    base = SamplingParams(max_tokens=24, ignore_eos=True, logit_bias=bias)
    pen = SamplingParams(max_tokens=24, ignore_eos=True, logit_bias=bias, **{kind: 2.0})
    a = tiny_llm.generate(PROMPT, base, PLAIN).token_ids
    b = tiny_llm.generate(PROMPT, pen, PLAIN).token_ids
    assert a != b and b.count(9707) < a.count(9707)  # repeating the biased token is penalised
    for k in (1, 3, 8):  # penalties at verify row i see drafts d1..d_i: still equal to plain
        assert tiny_llm.generate(PROMPT, pen, SpeculativeParams("ngram", k)).token_ids == b


ALPHABET_BIAS = tuple((t, 30.0) for t in (538, 818, 1195))


@pytest.mark.parametrize("kind,value,method", [
    ("presence_penalty", 2.0, "draft"), ("frequency_penalty", 1.0, "draft"), ("frequency_penalty", 0.5, "ngram"),
])
def test_penalties_see_accepted_drafts(small_loaded, kind, value, method):
    """Verify row i is penalised for the generated tokens plus drafts d1..d_i, as plain decoding
    would be after emitting them. The draft model here is the verifier itself, unpenalised: its
    drafts repeat tokens, which the penalty at a later row of the same step must see. For n-gram,
    an alphabet bias makes the model write in 3 tokens, so drafts hit past row 0 often."""
    bias = ALPHABET_BIAS if method == "ngram" else ()
    sp = SamplingParams(max_tokens=32, ignore_eos=True, logit_bias=bias, **{kind: value})
    plain, _ = run_steps(fresh_llm(small_loaded), SMALL_PROMPT, sp, PLAIN)
    unpenalised, _ = run_steps(fresh_llm(small_loaded), SMALL_PROMPT, replace(sp, **{kind: 0.0}), PLAIN)
    assert plain != unpenalised  # the penalty matters here
    formula = {"presence": value if kind == "presence_penalty" else 0.0, "frequency": value if kind == "frequency_penalty" else 0.0}
    assert plain == hf_greedy(small_loaded, SMALL_PROMPT, 32, bias, **formula)  # OpenAI's formula, written in the test
    if method == "ngram":  # a 3-token alphabet repeats tokens many times: the two formulas part ways
        other = {"presence": formula["frequency"], "frequency": formula["presence"]}
        assert plain != hf_greedy(small_loaded, SMALL_PROMPT, 32, bias, **other)
    llm = fresh_llm(small_loaded, small_loaded if method == "draft" else None)
    deep = 0
    for k in (2, 4, 8):
        out, steps = run_steps(llm, SMALL_PROMPT, sp, SpeculativeParams(method, k))
        assert out == plain, f"k={k}"
        deep += sum(1 for _, accepted in steps if accepted >= 2)
    assert deep >= 3, "drafts must be accepted past row 0"


def test_penalty_and_bias_validation(tiny_llm):
    from inference_engine.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as e:
        tiny_llm.generate(PROMPT, SamplingParams(presence_penalty=3.0))
    assert e.value.param == "presence_penalty"
    with pytest.raises(InvalidRequest) as e:
        tiny_llm.generate(PROMPT, SamplingParams(logit_bias=((10**7, 1.0),)))
    assert e.value.param == "logit_bias"
    with pytest.raises(InvalidRequest) as e:
        tiny_llm.generate(PROMPT, SamplingParams(logprobs=50))
    assert e.value.param == "top_logprobs"
