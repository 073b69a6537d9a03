"""Session store and prefix cache on the real tiny Qwen3: INV-1/2/3, LRU by bytes, TTL, capacity, busy."""
from __future__ import annotations

import pytest

from inference_engine.cache.session_store import SessionStore, common_prefix
from inference_engine.config import EngineConfig
from inference_engine.engine.llm import LLM
from inference_engine.errors import InvalidRequest, SessionBusy, SessionNotFound, TooManySessions
from inference_engine.types import SamplingParams, SpeculativeParams

TURN1 = [151644, 872, 198, 9707, 11, 1879, 30, 151645, 198, 151644, 77091, 198]
TURN2 = [151644, 872, 198, 3838, 911, 264, 1008, 30, 151645, 198, 151644, 77091, 198]
GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)
SEEDED = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True)


def _inv1(llm: LLM, sid: str) -> None:
    s = llm.core.sessions.get(sid)
    assert s.cache is not None and s.cache.length == len(s.history) - 1


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("spec", [SpeculativeParams("none", 0), SpeculativeParams("ngram", 4), SpeculativeParams("suffix", 6)])
def test_inv1_cache_length_equals_history_after_every_generate(tiny_llm, spec):
    sid = tiny_llm.core.sessions.create().session_id
    tiny_llm.core.sessions.append(sid, TURN1)
    for turn in range(3):
        out = tiny_llm.generate(None, GREEDY, spec, session_id=sid)
        _inv1(tiny_llm, sid)
        hist = list(tiny_llm.core.sessions.get(sid).history)
        assert hist[-len(out.token_ids):] == out.token_ids
        assert tiny_llm.core.sessions.append(sid, TURN2) == len(hist) + len(TURN2)
        assert tiny_llm.core.sessions.get(sid).cache.length == len(hist) - 1  # append feeds nothing yet


def test_inv1_stop_inside_accepted_draft_is_trimmed(tiny_loaded):
    """A draft model equal to the verifier gets all 8 drafts accepted; a stop token at output index 4
    discards the rest, and the KV of the discarded tokens must not stay in the session."""
    llm = LLM(tiny_loaded, EngineConfig(), draft=tiny_loaded)
    ref = llm.generate(TURN1, SamplingParams(max_tokens=16, ignore_eos=True), SpeculativeParams("none", 0)).token_ids
    stop = ref[4]
    sid = llm.core.sessions.create(eos_ids=[stop]).session_id
    llm.core.sessions.append(sid, TURN1)
    out = llm.generate(None, SamplingParams(max_tokens=16, ignore_eos=True), SpeculativeParams("draft", 8), session_id=sid)
    assert out.token_ids == ref[: ref.index(stop) + 1] and out.spec.draft_tokens >= 8
    _inv1(llm, sid)


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_inv3_output_independent_of_how_history_was_appended(tiny_llm, sampling):
    store = tiny_llm.core.sessions
    # session A: turn 1 generated, then turn 2 appended and generated on the reused cache
    a = store.create().session_id
    store.append(a, TURN1)
    first = tiny_llm.generate(None, sampling, session_id=a).token_ids
    store.append(a, TURN2)
    out_a = tiny_llm.generate(None, sampling, session_id=a).token_ids
    # session B: the same history appended in many small chunks, generated once
    b = store.create().session_id
    full = TURN1 + first + TURN2
    for i in range(0, len(full), 5):
        store.append(b, full[i : i + 5])
    out_b = tiny_llm.generate(None, sampling, session_id=b).token_ids
    # and statelessly, with the prefix cache off: one prefill of everything
    plain = LLM(_loaded(tiny_llm), EngineConfig(prefix_cache=False))
    out_c = plain.generate(full, sampling).token_ids
    assert out_a == out_b == out_c


def _loaded(llm):
    from inference_engine.models import LoadedModel

    return LoadedModel(llm.model, llm.tokenizer, llm.info)


def test_turn_n_prefills_only_new_tokens(tiny_llm):
    """20 turns: each turn feeds the appended tokens plus the previous turn's last token, nothing more."""
    store = tiny_llm.core.sessions
    sid = store.create().session_id
    for turn in range(20):
        before = len(store.get(sid).history)
        store.append(sid, TURN2)
        out = tiny_llm.generate(None, SamplingParams(max_tokens=4, ignore_eos=True), session_id=sid)
        prefilled = out.usage.prompt_tokens - out.usage.cached_tokens
        assert out.usage.prompt_tokens == before + len(TURN2)
        assert prefilled == (len(TURN2) if turn == 0 else len(TURN2) + 1)
        _inv1(tiny_llm, sid)


def test_prefix_cache_reuses_a_stateless_prefix(tiny_llm):
    first = tiny_llm.generate(TURN1, GREEDY)
    again = tiny_llm.generate(TURN1 + first.token_ids + TURN2, GREEDY)
    assert again.usage.cached_tokens == len(TURN1) + len(first.token_ids) - 1
    fresh = LLM(_loaded(tiny_llm), EngineConfig(prefix_cache=False)).generate(TURN1 + first.token_ids + TURN2, GREEDY)
    assert fresh.usage.cached_tokens == 0 and fresh.token_ids == again.token_ids


def test_inv2_lru_eviction_by_bytes(tiny_llm):
    store = tiny_llm.core.sessions
    ids = []
    for i in range(3):
        sid = store.create().session_id
        store.append(sid, TURN1)
        tiny_llm.generate(None, GREEDY, session_id=sid)
        ids.append(sid)
    per_session = store.get(ids[0]).kv_bytes
    assert per_session > 0
    small = SessionStore(max_bytes=2 * per_session + per_session // 2)
    for sid in ids:  # move the three sessions into a store that holds two of them
        s = store.get(sid)
        t = small.create(session_id=sid)
        small.check_out(sid)
        small.check_in(t, s.history, s.cache)
        assert small.total_bytes <= small.max_bytes  # INV-2 after every check-in
    assert small.get(ids[0]).cache is None and small.get(ids[0]).history  # evicted KV, kept history
    assert small.get(ids[1]).cache is not None and small.get(ids[2]).cache is not None
    small.get(ids[1]).last_used  # touch nothing; now re-use ids[1], then add a fourth: ids[2] goes
    s1 = small.check_out(ids[1])
    small.check_in(s1, s1.history, s1.cache)
    extra = small.create()
    small.check_out(extra.session_id)
    small.check_in(extra, store.get(ids[2]).history, store.get(ids[2]).cache)
    assert small.get(ids[2]).cache is None and small.get(ids[1]).cache is not None
    assert small.total_bytes <= small.max_bytes


def test_inv2_through_the_engine(tiny_loaded):
    llm = LLM(tiny_loaded, EngineConfig(session_cache_bytes=200_000))
    for i in range(6):
        sid = llm.core.sessions.create().session_id
        llm.core.sessions.append(sid, TURN1 * (i + 1))
        llm.generate(None, GREEDY, session_id=sid)
        llm.generate(TURN2 * (i + 1), GREEDY)  # prefix-cache entries compete for the same budget
        assert llm.core.sessions.total_bytes <= 200_000


def test_ttl_expiry_and_capacity():
    clock = Clock()
    store = SessionStore(max_bytes=1 << 20, ttl_seconds=10, max_sessions=2, clock=clock)
    a = store.create().session_id
    clock.now = 5
    b = store.create().session_id
    with pytest.raises(TooManySessions):
        store.create()
    clock.now = 12  # a idle 12 s > 10: expired; b idle 7 s: alive
    store.get(b)
    with pytest.raises(SessionNotFound):
        store.get(a)
    store.create()  # the expired one freed a slot
    store.check_out(b)
    clock.now = 100
    assert b not in store.expire()  # a busy session never expires


def test_busy_not_found_and_empty_history(tiny_llm):
    store = tiny_llm.core.sessions
    sid = store.create().session_id
    with pytest.raises(InvalidRequest, match="no tokens"):
        tiny_llm.core.add_request(None, GREEDY, session_id=sid)
    store.append(sid, TURN1)
    tiny_llm.core.add_request(None, GREEDY, session_id=sid)
    with pytest.raises(SessionBusy):
        tiny_llm.core.add_request(None, GREEDY, session_id=sid)
    with pytest.raises(SessionBusy):
        store.append(sid, TURN2)
    with pytest.raises(SessionNotFound):
        tiny_llm.core.add_request(None, GREEDY, session_id="nope")
    while tiny_llm.core.has_work:
        tiny_llm.core.step()
    assert not store.get(sid).busy
    store.close(sid)
    with pytest.raises(SessionNotFound):
        store.get(sid)


def test_abort_returns_the_session(tiny_llm):
    store = tiny_llm.core.sessions
    sid = store.create().session_id
    store.append(sid, TURN1)
    req = tiny_llm.core.add_request(None, GREEDY, session_id=sid)
    tiny_llm.core.step()
    tiny_llm.core.step()
    assert tiny_llm.core.abort(req.request_id)
    s = store.get(sid)
    assert not s.busy and s.history == TURN1 + req.output_ids and len(req.output_ids) >= 1
    _inv1(tiny_llm, sid)


def test_prefix_cache_copies_a_partly_shared_entry(tiny_llm):
    """A request sharing only part of a cached prompt copies that part; the entry stays for the next."""
    store = tiny_llm.core.sessions
    tiny_llm.generate(TURN1 + TURN2, GREEDY)
    before = [(s.history, s.kv_length) for s in store._entries.values() if s.anonymous]
    branch = tiny_llm.generate(TURN1 + TURN1, GREEDY)
    assert branch.usage.cached_tokens == common_prefix(TURN1 + TURN2, TURN1 + TURN1) == len(TURN1) + 3
    after = [(s.history, s.kv_length) for s in store._entries.values() if s.anonymous]
    assert before[0] in after and len(after) == 2  # the original entry is intact, the branch added
    again = tiny_llm.generate(TURN1 + TURN2, GREEDY)  # the same prompt again: all but its last token cached
    assert again.usage.cached_tokens == len(TURN1 + TURN2) - 1
