"""Batched verification: interleaved requests and sessions produce exactly what they produce alone."""
from __future__ import annotations

import pytest

from inference_engine.config import EngineConfig
from test_lossless_models import hf_greedy, hf_ranks
from inference_engine.engine.llm import LLM
from inference_engine.tokenizer import apply_chat_template
from inference_engine.types import SamplingParams, SpeculativeParams, Submission

PROMPTS = [[151644, 872, 198, 9707 + i, 11, 1879 + 3 * i, 30, 151645, 198, 151644, 77091, 198][: 6 + i] for i in range(8)]
CASES = [
    (SamplingParams(max_tokens=16, ignore_eos=True), SpeculativeParams("none", 0)),
    (SamplingParams(max_tokens=16, ignore_eos=True), SpeculativeParams("ngram", 4)),
    (SamplingParams(max_tokens=16, temperature=0.8, top_k=50, seed=3, ignore_eos=True), SpeculativeParams("none", 0)),
]


def _run_together(llm: LLM, prompts, sampling, spec, session_ids=None):
    reqs = [llm.core.add_request(Submission(None if session_ids else p, sampling, spec, session_id=session_ids[i] if session_ids else None))
            for i, p in enumerate(prompts)]
    forwards = steps = 0
    while llm.core.has_work:
        forwards += llm.core.step().forwards
        steps += 1
    return [r.output_ids for r in reqs], forwards, steps


@pytest.mark.parametrize("n", [2, 8])
@pytest.mark.parametrize("sampling,spec", CASES, ids=["greedy", "ngram", "seeded"])
def test_interleaved_sessions_equal_each_alone(tiny_loaded, n, sampling, spec):
    alone = [LLM(tiny_loaded, EngineConfig(prefix_cache=False)).generate(p, sampling, spec).token_ids for p in PROMPTS[:n]]
    llm = LLM(tiny_loaded, EngineConfig())
    sids = []
    for p in PROMPTS[:n]:
        sids.append(llm.core.sessions.create().session_id)
        llm.core.sessions.append(sids[-1], p)
    together, forwards, steps = _run_together(llm, PROMPTS[:n], sampling, spec, sids)
    assert together == alone
    if sampling.temperature == 0:  # the independent reference: transformers' forward, argmax
        assert alone == [hf_greedy(tiny_loaded, p, sampling.max_tokens) for p in PROMPTS[:n]]
    else:  # every sampled token is among the top_k of transformers' logits, and not always the first
        ranks = [r for p, out in zip(PROMPTS[:n], alone) for r in hf_ranks(tiny_loaded, p, out)]
        assert max(ranks) < sampling.top_k and max(ranks) > 0, ranks
    # step 1 runs the n prefills alone; every later step verifies all decoding rows in one forward
    assert forwards == n + (steps - 1)  # one forward per step after the prefills


def test_second_turns_interleave_on_cached_sessions(tiny_loaded):
    """Turn 2 of eight sessions at once, each on its own cache, equals each session's turn 2 run alone."""
    sampling, turn2 = SamplingParams(max_tokens=8, ignore_eos=True), [151644, 872, 198, 3838, 30]

    def turn1(llm):
        sids = []
        for p in PROMPTS:
            sid = llm.core.sessions.create().session_id
            llm.core.sessions.append(sid, p)
            llm.generate(None, sampling, session_id=sid)
            llm.core.sessions.append(sid, turn2)
            sids.append(sid)
        return sids

    solo = LLM(tiny_loaded, EngineConfig())
    alone = [solo.generate(None, sampling, session_id=sid).token_ids for sid in turn1(solo)]
    llm = LLM(tiny_loaded, EngineConfig())
    together, _, _ = _run_together(llm, PROMPTS, sampling, None, turn1(llm))
    assert together == alone
    # the reference: transformers' greedy over each whole conversation, no KV kept between turns
    first = [hf_greedy(tiny_loaded, p, 8) for p in PROMPTS]
    assert alone == [hf_greedy(tiny_loaded, p + out + turn2, 8) for p, out in zip(PROMPTS, first)]


def test_max_batch_splits_forwards(tiny_loaded):
    llm = LLM(tiny_loaded, EngineConfig(max_batch=3))
    for p in PROMPTS:
        llm.core.add_request(Submission(p, SamplingParams(max_tokens=4, ignore_eos=True), SpeculativeParams("none", 0)))
    llm.core.step()  # 8 prefills, one forward each
    assert llm.core.step().forwards == 3  # 8 decoding rows in batches of 3, 3, 2


@pytest.mark.real_model
def test_smollm2_batched_equals_solo(smol_loaded):
    qs = ["What is the capital of France?", "Write a haiku about rain.", "List three colors.", "Name a fruit."]
    prompts = [apply_chat_template(smol_loaded.tokenizer, [{"role": "user", "content": q}]) for q in qs]
    sampling, spec = SamplingParams(max_tokens=24), SpeculativeParams("none", 0)
    alone = [LLM(smol_loaded, EngineConfig(prefix_cache=False)).generate(p, sampling, spec).token_ids for p in prompts]
    together, _, _ = _run_together(LLM(smol_loaded, EngineConfig()), prompts, sampling, spec)
    assert together == alone
