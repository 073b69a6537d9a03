"""EngineCore / LLM on the tiny Qwen3 and on real SmolLM2: results, errors, control, scheduling."""
from __future__ import annotations

import pytest

from inference_engine.cache.kv_cache import KVCache
from inference_engine.config import EngineConfig
from inference_engine.engine.llm import LLM
from inference_engine.errors import ContextLengthExceeded, InvalidRequest, Overloaded
from inference_engine.tokenizer import apply_chat_template
from inference_engine.types import FinishReason, SamplingParams, SpeculativeParams, Submission

PROMPT = [151644, 872, 198, 9707, 11, 1879]
PLAIN = SpeculativeParams("none", 0)


@pytest.mark.real_model
def test_smollm2_knows_paris(smol_llm):
    ids = apply_chat_template(smol_llm.tokenizer, [{"role": "user", "content": "Name the capital of France."}])
    out = smol_llm.generate(ids, SamplingParams(max_tokens=32))
    assert "Paris" in out.text
    assert out.finish_reason is FinishReason.STOP and out.token_ids[-1] in smol_llm.info.eos_ids
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == len(out.token_ids)


def test_max_tokens_gives_length(tiny_llm):
    out = tiny_llm.generate(PROMPT, SamplingParams(max_tokens=7, ignore_eos=True))
    assert len(out.token_ids) == 7 and out.finish_reason is FinishReason.LENGTH
    assert out.text == tiny_llm.tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_stop_token_ids_end_generation(tiny_llm):
    ref = tiny_llm.generate(PROMPT, SamplingParams(max_tokens=20, ignore_eos=True)).token_ids
    stop_at = ref[5]
    out = tiny_llm.generate(PROMPT, SamplingParams(max_tokens=20, stop_token_ids=(stop_at,), ignore_eos=True))
    assert out.token_ids == ref[: ref.index(stop_at) + 1] and out.finish_reason is FinishReason.STOP


@pytest.mark.parametrize("method,k", [("none", 0), ("ngram", 4)])
def test_callback_stops_early(tiny_llm, method, k):
    seen = []

    def on_token(t):
        seen.append(t)
        return len(seen) == 3

    out = tiny_llm.generate(PROMPT * 3, SamplingParams(max_tokens=30, ignore_eos=True), SpeculativeParams(method, k), on_token)
    assert len(out.token_ids) == 3 and seen == out.token_ids and out.finish_reason is FinishReason.STOP
    assert tiny_llm.core.scheduler.running == []  # released


def test_same_seed_same_sample(tiny_llm):
    sp = SamplingParams(max_tokens=24, temperature=1.0, seed=1234, ignore_eos=True)
    a = tiny_llm.generate(PROMPT, sp).token_ids
    b = tiny_llm.generate(PROMPT, sp).token_ids
    c = tiny_llm.generate(PROMPT, SamplingParams(max_tokens=24, temperature=1.0, seed=99, ignore_eos=True)).token_ids
    assert a == b and a != c


def test_sampling_filters_run_end_to_end(tiny_llm):
    sp = SamplingParams(max_tokens=16, temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, seed=3, ignore_eos=True)
    out = tiny_llm.generate(PROMPT * 2, sp, SpeculativeParams("ngram", 3))
    assert len(out.token_ids) == 16


@pytest.mark.parametrize("k", [1, 3, 8])
def test_spec_stats_add_up(tiny_llm, k):
    out = tiny_llm.generate(PROMPT * 4, SamplingParams(max_tokens=30, ignore_eos=True), SpeculativeParams("ngram", k))
    s = out.spec
    assert s.accepted_tokens <= s.draft_tokens
    assert len(out.token_ids) == s.accepted_tokens + s.recovered_tokens + s.bonus_tokens + s.plain_steps
    assert sum(s.accepted_per_pos) == s.accepted_tokens and len(s.accepted_per_pos) <= k
    assert s.verify_steps == s.drafts + s.plain_steps
    assert s.draft_tokens > 0  # the repeated prompt makes the n-gram proposer draft


@pytest.mark.parametrize(
    "prompt,sp,spec,param",
    [
        ([], SamplingParams(), PLAIN, "prompt"),
        (PROMPT, SamplingParams(max_tokens=0), PLAIN, "max_tokens"),
        (PROMPT, SamplingParams(max_tokens=-3), PLAIN, "max_tokens"),
        ([10**7], SamplingParams(), PLAIN, "prompt"),
        (PROMPT, SamplingParams(temperature=-1), PLAIN, "temperature"),
        (PROMPT, SamplingParams(top_p=1.5), PLAIN, "top_p"),
        # NaN compares False with everything: each range check must still refuse it (gRPC sends it)
        (PROMPT, SamplingParams(temperature=float("nan")), PLAIN, "temperature"),
        (PROMPT, SamplingParams(top_p=float("nan")), PLAIN, "top_p"),
        (PROMPT, SamplingParams(temperature=float("inf")), PLAIN, "temperature"),
        (PROMPT, SamplingParams(temperature=1.0, logit_bias=((5, float("inf")),)), PLAIN, "logit_bias"),
        (PROMPT, SamplingParams(temperature=1.0, logit_bias=((5, float("nan")),)), PLAIN, "logit_bias"),
        (PROMPT, SamplingParams(top_k=-1), PLAIN, "top_k"),
        (PROMPT, SamplingParams(min_p=2), PLAIN, "min_p"),
        (PROMPT, SamplingParams(), SpeculativeParams("eagle", 2), "speculative.method"),
        (PROMPT, SamplingParams(), SpeculativeParams("ngram", 99), "speculative.num_draft_tokens"),
    ],
)
def test_invalid_requests_name_the_field(tiny_llm, prompt, sp, spec, param):
    with pytest.raises(InvalidRequest) as e:
        tiny_llm.generate(prompt, sp, spec)
    assert e.value.param == param and e.value.http_status == 400
    assert not tiny_llm.core.has_work  # nothing was queued


def test_context_length_exceeded(tiny_llm):
    with pytest.raises(ContextLengthExceeded) as e:
        tiny_llm.generate(PROMPT, SamplingParams(max_tokens=tiny_llm.core.max_context))
    assert e.value.code == "context_length_exceeded" and "maximum context length is 1024" in e.value.message


def test_interleaved_requests_equal_each_alone(tiny_loaded):
    llm = LLM(tiny_loaded, EngineConfig(max_running=2))
    sp = SamplingParams(max_tokens=12, ignore_eos=True)
    alone = [llm.generate(p, sp).token_ids for p in (PROMPT, PROMPT[:3], PROMPT[::-1])]
    reqs = [llm.core.add_request(Submission(p, sp)) for p in (PROMPT, PROMPT[:3], PROMPT[::-1])]
    steps = 0
    while llm.core.has_work:
        stats = llm.core.step()
        assert stats.num_running <= 2
        steps += 1
    assert [r.output_ids for r in reqs] == alone
    assert steps < 3 * 12  # two ran side by side


def test_queue_bound_and_abort(tiny_loaded):
    llm = LLM(tiny_loaded, EngineConfig(max_running=1, max_waiting=1))
    sp = SamplingParams(max_tokens=5)
    a = llm.core.add_request(Submission(PROMPT, sp))
    llm.core.step()  # a is running
    llm.core.add_request(Submission(PROMPT, sp, request_id="b"))  # waits
    with pytest.raises(Overloaded) as e:
        llm.core.add_request(Submission(PROMPT, sp))
    assert e.value.http_status == 429
    assert llm.core.abort(a.request_id) and a.cache is None and a.finished
    assert llm.core.abort("b") and not llm.core.has_work
    assert not llm.core.abort("nope")


def test_a_burst_fills_the_running_slots_then_the_queue(tiny_loaded):
    """--max-running 2 --max-waiting 2: four requests arriving at once at an idle engine are all
    admitted (two run at the next step, two wait); a fifth is refused."""
    llm = LLM(tiny_loaded, EngineConfig(max_running=2, max_waiting=2))
    sp = SamplingParams(max_tokens=3, ignore_eos=True)
    reqs = [llm.core.add_request(Submission(PROMPT, sp)) for _ in range(4)]
    with pytest.raises(Overloaded):
        llm.core.add_request(Submission(PROMPT, sp))
    assert llm.core.step().num_running == 2
    while llm.core.has_work:
        llm.core.step()
    assert [len(r.output_ids) for r in reqs] == [3, 3, 3, 3]


def test_kv_cache_length_trim_nbytes(tiny_loaded):
    cache = KVCache(tiny_loaded.model.config)
    assert cache.length == 0 and cache.nbytes == 0
    llm = LLM(tiny_loaded)
    llm.core.verifier.forward(cache, PROMPT, 1)
    cfg = tiny_loaded.model.config
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4  # K+V, fp32
    assert cache.length == len(PROMPT) and cache.nbytes == per_token * cache.capacity >= per_token * len(PROMPT)
    assert cache.trim(2) == 2 and cache.length == len(PROMPT) - 2
    assert cache.trim(100) == len(PROMPT) - 2 and cache.length == 0
    assert cache.trim(-1) == 0


def test_trimmed_cache_gives_same_logits_as_fresh(tiny_loaded):
    # Rollback by trimming must leave the cache exactly as if the rejected tokens never came.
    import torch

    llm = LLM(tiny_loaded)
    a, b = KVCache(tiny_loaded.model.config), KVCache(tiny_loaded.model.config)
    llm.core.verifier.forward(a, PROMPT + [5, 6, 7], 1)
    a.trim(3)
    llm.core.verifier.forward(b, PROMPT, 1)
    la = llm.core.verifier.forward(a, [42, 43], 2)
    lb = llm.core.verifier.forward(b, [42, 43], 2)
    # KV computed inside a longer prefill GEMM may differ in the last ulp, not more
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    assert torch.equal(la.argmax(-1), lb.argmax(-1))
