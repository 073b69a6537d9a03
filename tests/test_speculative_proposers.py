"""The proposers on real tiny Qwen3s: the draft model at its extremes (equal to the verifier,
unrelated to it), the suffix index learning from finished requests, auto's controller, and the
draft model's rejection sampling keeping the verifier's distribution end to end (chi-square).
The k = 1..8 equivalence sweeps with partial accepts are in test_speculative_equivalence.py."""
from __future__ import annotations

import pytest

from conftest import build_tiny_qwen3
from test_lossless_models import build_small_qwen3, near_small, perturbed_copy, small_loaded, small_qwen3_dir  # noqa: F401
from inference_engine.config import EngineConfig, ModelConfig
from inference_engine.engine.llm import LLM
from inference_engine.engine.sampling import target_probs
from inference_engine.errors import ModelLoadError
from inference_engine.models import load_model
from inference_engine.types import SamplingParams, SpeculativeParams, Submission

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


@pytest.mark.parametrize("k", [2, 8])
@pytest.mark.parametrize("draft", ["same", "other"])
def test_draft_model_greedy_equals_plain(draft_llms, k, draft):
    # The extremes; test_speculative_equivalence.py sweeps k = 1..8 with a draft that agrees partly.
    llm = draft_llms[draft]
    plain = llm.generate(PROMPT, GREEDY, PLAIN)
    out = llm.generate(PROMPT, GREEDY, SpeculativeParams("draft", k))
    assert out.token_ids == plain.token_ids
    s = out.spec
    if draft == "same":  # the draft is the verifier: every draft token is accepted
        assert s.accepted_tokens == s.draft_tokens > 0 and s.recovered_tokens == 0
    else:
        assert s.accepted_tokens < 0.2 * s.draft_tokens


def test_suffix_learns_from_finished_requests(tiny_llm):
    # The second identical request drafts the first one's output from the suffix index.
    first = tiny_llm.generate(PROMPT, GREEDY, SpeculativeParams("suffix", 8))
    again = tiny_llm.generate(PROMPT, GREEDY, SpeculativeParams("suffix", 8))
    assert again.token_ids == first.token_ids
    assert again.spec.accepted_tokens >= 20 and again.spec.verify_steps <= 5
    assert tiny_llm.core.speculator.suffix_index_tokens > 0


@pytest.fixture(scope="module")
def micro_pair(tmp_path_factory, qwen3_tokenizer_dir):
    """A Qwen3 with an 8-token vocabulary and a noisy copy of it as its draft model: a 3-token
    output then has 512 possible values, so its exact distribution is computable for chi-square."""
    src = build_small_qwen3(tmp_path_factory.mktemp("micro"), qwen3_tokenizer_dir, vocab_size=8, tie=False)
    draft = perturbed_copy(src, tmp_path_factory.mktemp("micro-draft"), noise=0.3)  # accepts ~half its drafts
    return tuple(load_model(ModelConfig(model=str(p), device="cpu", dtype="float32")) for p in (src, draft))


def _exact_joint(verifier, prompt, n, sp):
    """P(t1..tn) for every n-token continuation, from one verifier forward per prefix."""
    joint = {(): 1.0}
    for _ in range(n):
        longer = {}
        for prefix, pr in joint.items():
            row = target_probs(verifier.forward(verifier.new_cache(), prompt + list(prefix), 1), sp)[0]
            for t, q in enumerate(row.tolist()):
                if q > 0:
                    longer[prefix + (t,)] = pr * q
        joint = longer
    return joint


def _chi2_crit_001(df: int) -> float:
    """Chi-square critical value at p = 0.001 (Wilson-Hilferty; within 1 % for df >= 3)."""
    z = 3.0902
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def test_seeded_draft_model_sampling_is_reproducible(small_loaded, near_small):
    """A seed fixes the text under draft-model speculation too: the acceptance test's uniforms and
    every recovered or bonus token draw from the request's seeded generators. The draft is the
    verifier with a little noise, so p/q is neither ~0 nor 1 and the uniforms decide."""
    from test_lossless_models import SMALL_PROMPT, fresh_llm

    llm = fresh_llm(small_loaded, near_small, prefix_cache=False)
    runs = [llm.generate(SMALL_PROMPT, SamplingParams(max_tokens=24, temperature=1.0, seed=s, ignore_eos=True),
                         SpeculativeParams("draft", 4)) for s in (7, 7, 8)]
    assert runs[0].token_ids == runs[1].token_ids and runs[0].token_ids != runs[2].token_ids
    s = runs[0].spec
    assert s.accepted_tokens and s.recovered_tokens  # drafts both accepted and rejected


def test_draft_model_sampling_matches_verifier_distribution(micro_pair):
    """End to end through the engine with a real draft model, k = 2 and max_tokens = 3: the first
    step drafts two tokens, so the 3-token output holds accepted drafts, recovered tokens and the
    bonus token. Its joint distribution must be the verifier's own (chi-square over all 3 tokens)."""
    target, draft = micro_pair
    llm = LLM(target, EngineConfig(prefix_cache=False), draft=draft)
    prompt, n = [1, 2, 3, 4, 5], 400
    sp = dict(max_tokens=3, temperature=1.0, top_k=5, ignore_eos=True)
    exact = _exact_joint(llm.core.verifier, prompt, 3, SamplingParams(**sp))
    seen: dict[tuple, int] = {}
    accepted = recovered = bonus = 0
    for seed in range(n):
        out = llm.generate(prompt, SamplingParams(seed=seed, **sp), SpeculativeParams("draft", 2))
        key = tuple(out.token_ids)
        assert key in exact, f"{key} has probability zero under the verifier"
        seen[key] = seen.get(key, 0) + 1
        accepted += out.spec.accepted_tokens
        recovered += out.spec.recovered_tokens
        bonus += out.spec.bonus_tokens
    assert accepted > n / 2 and recovered > n / 4 and bonus > n / 4, (accepted, recovered, bonus)  # drafting really happened
    # cells expected >= 5 times are tested one by one, the rest pooled into one cell
    big = [c for c, pr in exact.items() if pr * n >= 5]
    observed = [seen.get(c, 0) for c in big] + [n - sum(seen.get(c, 0) for c in big)]
    expected = [exact[c] * n for c in big] + [n - sum(exact[c] * n for c in big)]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected) if e > 0)
    assert len(big) >= 10
    assert chi2 < _chi2_crit_001(len(big)), (chi2, len(big))


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
    rates = llm.core.speculator.controller.rates()
    assert rates and rates[0] < 0.5  # learned down from the 0.5 prior


def test_auto_notices_when_drafts_start_matching(tiny_loaded):
    # First teach the controller that drafts fail (k -> 0), then ask for an output the suffix
    # index already holds: shadow checks of the free first draft token during plain steps
    # must bring drafting back within a few steps, long before a scheduled re-probe.
    llm = LLM(tiny_loaded, EngineConfig(cost_curve=(1.0, 1.6, 1.62, 1.65, 1.7, 1.72, 1.75, 1.78, 1.8)))
    sp = SamplingParams(max_tokens=48, ignore_eos=True)
    llm.generate(PROMPT * 6, sp, SpeculativeParams("auto", 8))
    assert llm.core.speculator.controller.rates()[0] < 0.5
    known = llm.generate(PROMPT, sp, PLAIN)  # the suffix index now holds this output
    again = llm.generate(PROMPT, sp, SpeculativeParams("auto", 8))
    assert again.token_ids == known.token_ids
    assert again.spec.verify_steps < 0.5 * len(again.token_ids), again.spec


def test_draft_model_runs_on_the_fast_path_and_equals_transformers(draft_llms, other_qwen3):
    """The engine runs the draft model on its fast path; the proposer's own transformers runner
    (used when no engine runner is given) drafts the same tokens."""
    from kv_cache_proposer.draft_model import DraftModelProposer

    engine_side = draft_llms["other"].core.speculator.proposers["draft"]
    assert engine_side.runner.path == "fast"
    standalone = DraftModelProposer(other_qwen3.model)
    req = draft_llms["other"].core.add_request(Submission(PROMPT, GREEDY, SpeculativeParams("draft", 6), request_id="cmp"))
    try:
        for history in (PROMPT, PROMPT + [9707, 11], PROMPT[:-2]):  # grows, then crops back
            req.prompt_ids[:] = history
            a, b = engine_side.propose([req], [6])[0], standalone.propose([req], [6])[0]
            assert a.tokens == b.tokens and len(a.tokens) == 6
    finally:
        draft_llms["other"].core.abort("cmp")
