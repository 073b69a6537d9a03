"""Lossless: greedy decoding with the n-gram proposer equals plain greedy, token for token."""
from __future__ import annotations

import pytest

from inference_engine.tokenizer import apply_chat_template
from inference_engine.types import SamplingParams, SpeculativeParams

PLAIN = SpeculativeParams("none", 0)


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


def test_tiny_qwen3_ngram_equals_plain(tiny_llm, qwen3_tokenizer):
    # A repetitive prompt makes the n-gram proposer draft; random weights reject most drafts.
    text = "one two three four five six one two three four five six one two three"
    prompt = qwen3_tokenizer(text)["input_ids"]
    plain, totals = _check_equal_for_all_k(tiny_llm, prompt, 40)
    assert totals["rejected"] > 0, "the test must exercise early rejects"


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
