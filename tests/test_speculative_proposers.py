"""Every proposer is lossless on the real tiny Qwen3: greedy equals plain for k = 1..8, seeded
sampling is unchanged by speculation, and the draft model's rejection sampling keeps the
verifier's distribution (chi-square)."""
from __future__ import annotations

import pytest
import torch

from conftest import build_tiny_qwen3
from inference_engine.config import EngineConfig, ModelConfig
from inference_engine.engine.llm import LLM
from inference_engine.engine.sampling import target_probs
from inference_engine.errors import ModelLoadError
from inference_engine.models import load_model
from inference_engine.types import SamplingParams, SpeculativeParams

PROMPT = [151644, 872, 198, 9707, 11, 1879, 11, 9707, 11]
PLAIN = SpeculativeParams("none", 0)
GREEDY = SamplingParams(max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def other_qwen3(tmp_path_factory, qwen3_tokenizer_dir):
    """An unrelated random Qwen3 (different seed): same vocabulary, drafts mostly rejected."""
    path = build_tiny_qwen3(tmp_path_factory.mktemp("other-qwen3"), qwen3_tokenizer_dir, seed=1)
    return load_model(ModelConfig(model=str(path), device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def draft_llms(tiny_loaded, other_qwen3):
    return {"same": LLM(tiny_loaded, draft=tiny_loaded), "other": LLM(tiny_loaded, draft=other_qwen3)}


@pytest.mark.parametrize("k", range(1, 9))
@pytest.mark.parametrize("draft", ["same", "other"])
def test_draft_model_greedy_equals_plain(draft_llms, k, draft):
    llm = draft_llms[draft]
    plain = llm.generate(PROMPT, GREEDY, PLAIN)
    out = llm.generate(PROMPT, GREEDY, SpeculativeParams("draft", k))
    assert out.token_ids == plain.token_ids
    s = out.spec
    if draft == "same":  # the draft is the verifier: every draft token is accepted
        assert s.accepted_tokens == s.draft_tokens > 0 and s.recovered_tokens == 0
    else:
        assert s.accepted_tokens < 0.2 * s.draft_tokens


@pytest.mark.parametrize("method", ["suffix", "auto"])
def test_suffix_and_auto_greedy_equal_plain(tiny_llm, method):
    plain = tiny_llm.generate(PROMPT, GREEDY, PLAIN)
    for k in range(1, 9):
        assert tiny_llm.generate(PROMPT, GREEDY, SpeculativeParams(method, k)).token_ids == plain.token_ids


def test_suffix_learns_from_finished_requests(tiny_llm):
    # The second identical request drafts the first one's output from the suffix index.
    first = tiny_llm.generate(PROMPT, GREEDY, SpeculativeParams("suffix", 8))
    again = tiny_llm.generate(PROMPT, GREEDY, SpeculativeParams("suffix", 8))
    assert again.token_ids == first.token_ids
    assert again.spec.accepted_tokens >= 20 and again.spec.verify_steps <= 5
    assert tiny_llm.core.suffix.num_tokens > 0


@pytest.mark.parametrize("method,k", [("ngram", 4), ("suffix", 6), ("auto", 8)])
def test_seeded_sampling_unchanged_by_speculation(tiny_llm, method, k):
    # Point-mass drafts accept iff the draft equals the position-seeded sample: the text is the plain sample.
    for seed in range(3):
        sp = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=seed, ignore_eos=True)
        tiny_llm.generate(PROMPT, sp, PLAIN)  # teach the suffix index this very output
        plain = tiny_llm.generate(PROMPT, sp, PLAIN)
        spec = tiny_llm.generate(PROMPT, sp, SpeculativeParams(method, k))
        assert spec.token_ids == plain.token_ids
        if method == "suffix":
            assert spec.spec.accepted_tokens > 0


def test_draft_model_sampling_matches_verifier_distribution(tiny_loaded, other_qwen3):
    # First token with top_k=3: the target support has 3 tokens; compare counts to the exact target.
    llm = LLM(tiny_loaded, draft=other_qwen3)
    sp_kwargs = dict(max_tokens=1, temperature=1.5, top_k=3)
    logits = llm.core.verifier.forward(llm.core.verifier.new_cache(), PROMPT, 1)
    p = target_probs(logits, SamplingParams(**sp_kwargs))[0]  # [V]
    support = torch.nonzero(p).flatten().tolist()
    counts = {t: 0 for t in support}
    n = 600
    for seed in range(n):
        tok = llm.generate(PROMPT, SamplingParams(seed=seed, **sp_kwargs), SpeculativeParams("draft", 1)).token_ids[0]
        counts[tok] += 1  # KeyError if a token outside the target support appeared
    chi2 = sum((counts[t] - n * float(p[t])) ** 2 / (n * float(p[t])) for t in support)
    assert chi2 < 13.82  # chi-square, df = 2, p = 0.001
    assert min(counts.values()) > 0


def test_draft_vocabulary_mismatch_is_refused(tiny_loaded, smol_loaded):
    with pytest.raises(ModelLoadError, match="tokenizer does not match"):
        LLM(tiny_loaded, draft=smol_loaded)


def test_draft_method_needs_a_draft_model(tiny_llm):
    from inference_engine.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="unknown speculative method 'draft'"):
        tiny_llm.generate(PROMPT, GREEDY, SpeculativeParams("draft", 2))


def test_auto_prefers_plain_when_drafts_fail(tiny_loaded):
    # Random weights never continue a repeated pattern: the controller learns k = 0.
    # The cost curve is pinned to this CPU's float32 one (DESIGN.md §3): measured timings are noisy here.
    llm = LLM(tiny_loaded, EngineConfig(cost_curve=(1.0, 1.6, 1.62, 1.65, 1.7, 1.72, 1.75, 1.78, 1.8)))
    prompt = PROMPT * 6
    out = llm.generate(prompt, SamplingParams(max_tokens=64, ignore_eos=True), SpeculativeParams("auto", 8))
    s = out.spec
    assert s.plain_steps > 0.6 * s.verify_steps, s
    rates = llm.core.controller.rates()
    assert rates and rates[0] < 0.5  # learned down from the 0.5 prior


def test_auto_notices_when_drafts_start_matching(tiny_loaded):
    # First teach the controller that drafts fail (k -> 0), then ask for an output the suffix
    # index already holds: shadow checks of the free first draft token during plain steps
    # must bring drafting back within a few steps, long before a scheduled re-probe.
    llm = LLM(tiny_loaded, EngineConfig(cost_curve=(1.0, 1.6, 1.62, 1.65, 1.7, 1.72, 1.75, 1.78, 1.8)))
    sp = SamplingParams(max_tokens=48, ignore_eos=True)
    llm.generate(PROMPT * 6, sp, SpeculativeParams("auto", 8))
    assert llm.core.controller.rates()[0] < 0.5
    known = llm.generate(PROMPT, sp, PLAIN)  # the suffix index now holds this output
    again = llm.generate(PROMPT, sp, SpeculativeParams("auto", 8))
    assert again.token_ids == known.token_ids
    assert again.spec.verify_steps < 0.5 * len(again.token_ids), again.spec


def test_draft_model_runs_on_the_fast_path_and_equals_transformers(draft_llms, other_qwen3):
    """The engine runs the draft model on its fast path; the proposer's own transformers runner
    (used when no engine runner is given) drafts the same tokens."""
    from kv_cache_proposer.draft_model import DraftModelProposer

    engine_side = draft_llms["other"].core.proposers["draft"]
    assert engine_side.runner.path == "fast"
    standalone = DraftModelProposer(other_qwen3.model)
    req = draft_llms["other"].core.add_request(PROMPT, GREEDY, SpeculativeParams("draft", 6), request_id="cmp")
    try:
        for history in (PROMPT, PROMPT + [9707, 11], PROMPT[:-2]):  # grows, then crops back
            req.prompt_ids[:] = history
            a, b = engine_side.propose([req], [6])[0], standalone.propose([req], [6])[0]
            assert a.tokens == b.tokens and len(a.tokens) == 6
    finally:
        draft_llms["other"].core.abort("cmp")
