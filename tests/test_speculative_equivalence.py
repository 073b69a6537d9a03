"""Lossless: speculative decoding equals plain decoding token for token, for every proposer and
k = 1..8, on drafts that agree with the verifier only partly; greedy output is also checked against
transformers' own forward (hf_greedy: no engine code), so a bug shared by both paths shows. Each proposer must show full
accepts, full rejects and partial accepts (a prefix of the draft accepted, then a rejection),
because rollback bugs live in the partial case."""
from __future__ import annotations

import pytest

from inference_engine.tokenizer import apply_chat_template
from inference_engine.types import SamplingParams, SpeculativeParams
from test_lossless_models import (  # noqa: F401  (fixtures)
    PLAIN, SMALL_PROMPT, add_mix, fresh_llm, hf_greedy, near_small, run_steps, small_loaded, small_qwen3_dir,
    taught_variant,
)

# Three tokens lifted far above the rest: the model then writes in a 3-token alphabet and repeats
# its own n-grams, continuing some of them the same way (accepts) and some not (rejects).
ALPHABET_BIAS = tuple((t, 30.0) for t in (538, 818, 1195))
GREEDY = SamplingParams(max_tokens=32, ignore_eos=True)
CASES = {  # method -> sampling; ngram drafts only from repeats, which the alphabet bias makes
    "ngram": SamplingParams(max_tokens=32, ignore_eos=True, logit_bias=ALPHABET_BIAS),
    "suffix": GREEDY,
    "auto": GREEDY,
    "draft": GREEDY,
}


def _engine(loaded, method, reference):
    """A fresh engine per run (finished runs teach the suffix index the right text); suffix/auto
    get an index holding the reference with every 4th token wrong, so their drafts run right for a
    while and then wrong. auto's cost curve is pinned (fresh_llm)."""
    llm = fresh_llm(loaded, prefix_cache=False)
    if method in ("suffix", "auto"):
        llm.core.speculator.suffix_for("").add_sequence(SMALL_PROMPT + taught_variant(reference, every=4))
    return llm


@pytest.mark.parametrize("method", list(CASES))
def test_greedy_equals_plain_for_every_k(small_loaded, near_small, method):
    sp = CASES[method]
    plain, _ = run_steps(fresh_llm(small_loaded), SMALL_PROMPT, sp, PLAIN)
    assert plain == hf_greedy(small_loaded, SMALL_PROMPT, sp.max_tokens, sp.logit_bias)  # the independent reference
    assert len(set(plain)) >= 3
    # the draft model keeps no state across requests: one engine serves every k (building one checks the vocabulary)
    drafting = fresh_llm(small_loaded, near_small, prefix_cache=False) if method == "draft" else None
    total: dict[str, int] = {}
    for k in range(1, 9):
        llm = drafting or _engine(small_loaded, method, plain)
        out, steps = run_steps(llm, SMALL_PROMPT, sp, SpeculativeParams(method, k))
        assert out == plain, f"{method} k={k} diverged from plain greedy at index {_first_diff(out, plain)}"
        add_mix(total, steps)
    assert min(total.get(key, 0) for key in ("full", "partial", "rejected")) >= 3, total


@pytest.mark.parametrize("method", ["ngram", "suffix", "auto"])
def test_seeded_sampling_equals_plain(small_loaded, method):
    """Point-mass drafts are accepted iff they equal the position-seeded sample, so a seeded
    request's text is the plain one, also when a draft is accepted part-way."""
    bias = ALPHABET_BIAS if method == "ngram" else ()
    total: dict[str, int] = {}
    for seed in range(2):
        sp = SamplingParams(max_tokens=24, temperature=0.8, seed=seed, ignore_eos=True, logit_bias=bias)
        plain, _ = run_steps(fresh_llm(small_loaded), SMALL_PROMPT, sp, PLAIN)
        for k in (2, 4, 8):
            out, steps = run_steps(_engine(small_loaded, method, plain), SMALL_PROMPT, sp, SpeculativeParams(method, k))
            assert out == plain, f"{method} seed={seed} k={k} diverged at index {_first_diff(out, plain)}"
            add_mix(total, steps)
    assert min(total.get(key, 0) for key in ("full", "partial", "rejected")) >= 2, total


def _first_diff(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _check_equal_for_all_k(llm, prompt_ids, max_tokens):
    greedy = SamplingParams(max_tokens=max_tokens)
    plain = llm.generate(prompt_ids, greedy, PLAIN)
    totals = {"accepted": 0, "rejected": 0}
    for k in range(1, 9):
        spec = llm.generate(prompt_ids, greedy, SpeculativeParams("ngram", k))
        assert spec.token_ids == plain.token_ids, f"k={k} diverged from plain greedy"
        assert spec.finish_reason == plain.finish_reason
        totals["accepted"] += spec.spec.accepted_tokens
        totals["rejected"] += spec.spec.draft_tokens - spec.spec.accepted_tokens
    return plain, totals


@pytest.mark.real_model
def test_smollm2_ngram_equals_plain(smol_llm):
    tok = smol_llm.tokenizer
    code = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"
    copy = apply_chat_template(tok, [{"role": "user", "content": f"Repeat this code exactly:\n{code}"}])
    chat = apply_chat_template(tok, [{"role": "user", "content": "Name three colours."}])
    _, copy_totals = _check_equal_for_all_k(smol_llm, copy, 32)
    _, chat_totals = _check_equal_for_all_k(smol_llm, chat, 16)
    assert copy_totals["accepted"] > 32, copy_totals  # long accepts on a copy prompt
    assert copy_totals["rejected"] + chat_totals["rejected"] > 0
