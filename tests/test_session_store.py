"""Session store and prefix cache on the real tiny Qwen3: INV-1/2/3, LRU by bytes, TTL, capacity, busy."""
from __future__ import annotations

import pytest

from inference_engine.cache.session_store import SessionStore, common_prefix
from inference_engine.config import EngineConfig
from inference_engine.engine.llm import LLM
from inference_engine.errors import InvalidRequest, SessionBusy, SessionNotFound, TooManySessions
from inference_engine.types import SamplingParams, SpeculativeParams, Submission
from test_lossless_models import (  # noqa: F401  (fixtures)
    CPU_LIKE, add_mix, fresh_llm, near_small, run_steps, small_loaded, small_qwen3_dir,
)

TURN1 = [151644, 872, 198, 9707, 11, 1879, 30, 151645, 198, 151644, 77091, 198]
TURN2 = [151644, 872, 198, 3838, 911, 264, 1008, 30, 151645, 198, 151644, 77091, 198]
GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)
SEEDED = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True)
S_TURN1 = [40, 1079, 264, 1273, 13, 358, 1079, 264]  # ids below the small model's 2048-token vocabulary
S_TURN2 = [1406, 911, 264, 1008, 30]


@pytest.fixture()
def tiny_llm(tiny_loaded) -> LLM:
    # The default method is auto: pin its cost curve so no test here depends on this CPU's timings.
    return LLM(tiny_loaded, EngineConfig(cost_curve=CPU_LIKE))


def _inv1(llm: LLM, sid: str) -> None:
    """INV-1: the session's cache holds exactly history[:-1], by length and by contents."""
    s = llm.core.sessions.get(sid)
    assert s.cache is not None and s.cache.length == len(s.history) - 1
    _same_kv_as_fresh_prefill(llm, s.cache, s.history[: s.cache.length])


def _same_kv_as_fresh_prefill(llm: LLM, cache, tokens) -> None:
    """Every cached key/value equals one prefill of `tokens` into a new cache, within 1e-5 of the
    values' scale (float32; seen here: 3e-6 at scale 5, where a stale position differs by O(1))."""
    v = llm.core.verifier
    fresh = v.new_cache()
    v.forward(fresh, tokens, 1)
    assert fresh.length == cache.length == len(tokens)
    for layer, ((k, val), (fk, fv)) in enumerate(zip(cache.layers(), fresh.layers())):
        for name, got, want in (("keys", k, fk), ("values", val, fv)):
            err, scale = float((got - want).abs().max()), max(1.0, float(want.abs().max()))
            assert err <= 1e-5 * scale, f"layer {layer} {name}: cached KV differs from a fresh prefill by {err}"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("method", ["none", "ngram", "suffix", "draft"])
def test_inv1_cache_equals_a_fresh_prefill_after_every_generate(small_loaded, near_small, method):
    """Three turns; after each, the session's KV is that of its history. With the draft model most
    steps accept part of the draft, so the rollback of the rest shows in the cached contents."""
    llm = fresh_llm(small_loaded, near_small if method == "draft" else None)
    sid = llm.core.sessions.create().session_id
    llm.core.sessions.append(sid, S_TURN1)
    total: dict[str, int] = {}
    for turn in range(3):
        out, steps = run_steps(llm, None, SamplingParams(max_tokens=12, ignore_eos=True), SpeculativeParams(method, 4), sid)
        add_mix(total, steps)
        _inv1(llm, sid)
        hist = list(llm.core.sessions.get(sid).history)
        assert hist[-len(out):] == out
        assert llm.core.sessions.append(sid, S_TURN2) == len(hist) + len(S_TURN2)
        assert llm.core.sessions.get(sid).cache.length == len(hist) - 1  # append feeds nothing yet
    if method == "draft":
        assert total.get("partial", 0) >= 2 and total.get("rejected", 0) >= 1, total


def test_inv1_cache_contents_after_a_diverging_prompt(small_loaded):
    """An HTTP client resends the conversation with an earlier turn edited: the session's KV is
    cut back to the shared prefix, the new tail prefilled, and the output is that of a fresh prefill."""
    llm = fresh_llm(small_loaded)
    sid = llm.core.sessions.create().session_id
    sp = SamplingParams(max_tokens=8, ignore_eos=True)
    first = llm.generate(S_TURN1 + S_TURN2, sp, session_id=sid).token_ids
    _inv1(llm, sid)
    edited = S_TURN1[:5] + [1008, 30] + S_TURN2 + first
    out = llm.generate(edited, sp, session_id=sid)
    assert out.usage.cached_tokens == 5
    _inv1(llm, sid)
    stateless = fresh_llm(small_loaded, prefix_cache=False).generate(edited, sp)
    assert out.token_ids == stateless.token_ids


def test_inv1_stop_inside_accepted_draft_is_trimmed(tiny_loaded):
    """A draft model equal to the verifier gets all 8 drafts accepted; a stop token at output index 4
    discards the rest, and the KV of the discarded tokens must not stay in the session."""
    llm = LLM(tiny_loaded, EngineConfig(cost_curve=CPU_LIKE), draft=tiny_loaded)
    ref = llm.generate(TURN1, SamplingParams(max_tokens=16, ignore_eos=True), SpeculativeParams("none", 0)).token_ids
    stop = ref[4]
    sid = llm.core.sessions.create(eos_ids=[stop]).session_id
    llm.core.sessions.append(sid, TURN1)
    out = llm.generate(None, SamplingParams(max_tokens=16, ignore_eos=True), SpeculativeParams("draft", 8), session_id=sid)
    assert out.token_ids == ref[: ref.index(stop) + 1] and out.spec.draft_tokens >= 8
    _inv1(llm, sid)


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_inv3_output_independent_of_how_history_was_appended(small_loaded, sampling):
    llm = fresh_llm(small_loaded)  # the default method, auto, drafts along the way (pinned cost curve)
    stateless = fresh_llm(small_loaded, prefix_cache=False)
    store = llm.core.sessions
    # session A: turn 1 generated, then turn 2 appended and generated on the reused cache
    a = store.create().session_id
    store.append(a, S_TURN1)
    first = llm.generate(None, sampling, session_id=a).token_ids
    store.append(a, S_TURN2)
    out_a = llm.generate(None, sampling, session_id=a).token_ids
    full = S_TURN1 + first + S_TURN2
    # session B: the HTTP path sends the growing conversation; each request reuses the session's
    # KV and prefills only the new piece (its one generated token is replaced by the next piece)
    b = store.create().session_id
    cuts = (3, 7, 12, 18, len(full) - 3)
    for end in cuts:
        llm.generate(full[:end], SamplingParams(max_tokens=1), session_id=b)
    out_b = llm.generate(full, sampling, session_id=b)
    assert out_b.usage.cached_tokens == cuts[-1]  # the KV really was computed in those pieces
    # and statelessly: one prefill of everything
    out_d = stateless.generate(full, sampling).token_ids
    assert out_a == out_b.token_ids == out_d
    # session C: the gRPC path appends pieces and generates after each; its history includes
    # those outputs, and its next output equals a one-chunk prefill of that history
    c = store.create().session_id
    for i in range(0, len(full), 7):
        store.append(c, full[i : i + 7])
        llm.generate(None, SamplingParams(max_tokens=2, ignore_eos=True), session_id=c)
    history = list(store.get(c).history)
    out_c = llm.generate(None, sampling, session_id=c)
    assert out_c.usage.cached_tokens == len(history) - 1
    assert out_c.token_ids == stateless.generate(history, sampling).token_ids


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
    fresh = LLM(_loaded(tiny_llm), EngineConfig(prefix_cache=False, cost_curve=CPU_LIKE)).generate(TURN1 + first.token_ids + TURN2, GREEDY)
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
    llm = LLM(tiny_loaded, EngineConfig(session_cache_bytes=200_000, cost_curve=CPU_LIKE))
    for i in range(6):
        sid = llm.core.sessions.create().session_id
        llm.core.sessions.append(sid, TURN1 * (i + 1))
        llm.generate(None, GREEDY, session_id=sid)
        llm.generate(TURN2 * (i + 1), GREEDY)  # prefix-cache entries compete for the same budget
        assert llm.core.sessions.total_bytes <= 200_000


def test_inv2_lru_across_tenants_against_a_reference(tiny_llm):
    """Sessions and prefix entries of three API keys under one byte budget, exceeded again and
    again by random turns: after every operation the entries that keep their KV are exactly those a
    brute-force LRU written here keeps (least recently used first; an evicted session keeps its
    history, an evicted prefix entry goes; at most max_prefix_entries prefixes), the budget holds,
    and no key sees another's session or prefix."""
    import random
    from collections import OrderedDict

    verifier, rng = tiny_llm.core.verifier, random.Random(3)

    def cache_of(tokens):
        c = verifier.new_cache()
        verifier.forward(c, tokens, 1)
        return c

    unit = cache_of(TURN1[:-1]).nbytes
    store = SessionStore(max_bytes=4 * unit, max_prefix_entries=3)
    ref: "OrderedDict[tuple, int]" = OrderedDict()  # key → KV bytes (0: history only), oldest first

    def evict():
        total = sum(ref.values())
        for key in list(ref):
            if total <= store.max_bytes:
                break
            if ref[key]:
                total -= ref[key]
                if key[0] == "p":
                    del ref[key]
                else:
                    ref[key] = 0

    tenants, words = ["", "key-a", "key-b"], {"": 300, "key-a": 600, "key-b": 900}  # disjoint token ids
    evictions = puts = 0
    for step in range(60):
        tenant = rng.choice(tenants)
        tokens = [words[tenant] + rng.randrange(50) for _ in range(rng.randint(4, 40))]
        if rng.random() < 0.7:
            sid = f"s{rng.randrange(3)}"
            s = store.check_out(sid, tenant=tenant, create=True)
            history = s.history + tokens
            cache = cache_of(history[:-1])
            ref[("s", tenant, sid)] = cache.nbytes
            ref.move_to_end(("s", tenant, sid))
            store.check_in(s, history, cache)
        else:
            cache = cache_of(tokens[:-1])
            store.put_prefix(tokens, cache, tenant=tenant)
            ref[("p", tenant, puts)] = cache.nbytes  # the store numbers its prefix entries in order
            puts += 1
            prefixes = [k for k in ref if k[0] == "p"]
            for k in prefixes[: max(0, len(prefixes) - store.max_prefix_entries)]:
                del ref[k]
        before = sum(1 for b in ref.values() if b)
        evict()
        evictions += before - sum(1 for b in ref.values() if b)
        assert {k for k, e in store._entries.items() if e.cache is not None} == {k for k, b in ref.items() if b}, step
        assert set(store._entries) == set(ref) and store.total_bytes == sum(ref.values()) <= store.max_bytes
    assert evictions > 10  # the budget was exceeded again and again
    shared = [5, 6, 7, 8, 9, 10]
    store.put_prefix(shared, cache_of(shared[:-1]), tenant="key-a")
    assert store.take_prefix(shared, tenant="key-b")[1] == 0 and store.take_prefix(shared, tenant="")[1] == 0
    assert store.take_prefix(shared, tenant="key-a")[1] == len(shared) - 1
    store.create(session_id="mine", tenant="key-a")
    with pytest.raises(SessionNotFound):
        store.get("mine", tenant="key-b")


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


def test_store_errors_say_what_and_where():
    """Each refusal names the session_id field and tells the client what to do (the edges pass these
    on as 404 / 409 / 429 bodies); a tenant's session is found only under that tenant."""
    clock = Clock()
    store = SessionStore(ttl_seconds=10, max_sessions=2, clock=clock)
    store.create(session_id="s1", tenant="t")
    cases = [
        (lambda: store.create(session_id="s1", tenant="t"), SessionBusy, "session 's1' already exists"),
        (lambda: store.get("s1"), SessionNotFound, "session 's1' does not exist (closed, expired or never created)"),
        (lambda: store.append("nope", [1]), SessionNotFound, "does not exist"),
        (lambda: store.close("nope"), SessionNotFound, "does not exist"),
    ]
    store.check_out("s1", tenant="t")
    cases += [
        (lambda: store.check_out("s1", tenant="t"), SessionBusy,
         "session 's1' already has a generate in progress; wait for it to finish or cancel it"),
        (lambda: store.append("s1", [1], tenant="t"), SessionBusy, "append after it finishes"),
        (lambda: store.close("s1", tenant="t"), SessionBusy, "cancel it first"),
    ]
    for call, kind, message in cases:
        with pytest.raises(kind) as e:
            call()
        assert message in e.value.message and e.value.param == "session_id", e.value.message
    store.create()
    with pytest.raises(TooManySessions, match=r"session capacity reached \(2\)"):
        store.create()
    s = store.get("s1", tenant="t")
    clock.now = 3
    store.check_in(s, [5], None)
    clock.now = 10
    assert store.idle_seconds(s) == 7
    clock.now = 13  # idle exactly the TTL: still alive (it expires once idle longer)
    assert store.get("s1", tenant="t") is s
    clock.now = 13.5
    with pytest.raises(SessionNotFound):
        store.get("s1", tenant="t")


def test_prefix_entries_bounded_taken_and_fitted(tiny_llm):
    """The prefix cache keeps the 16 newest entries (docs/api.md); an entry whose whole history is a
    prefix of the prompt is moved out, one shared in part is copied and stays, one token shared
    counts; no cache is no entry; a session's KV is trimmed to its history less the newest token."""
    verifier = tiny_llm.core.verifier

    def cache_of(tokens):
        c = verifier.new_cache()
        verifier.forward(c, tokens, 1)
        return c

    store = SessionStore()
    for i in range(17):
        store.put_prefix([100 + i, 7, 8, 9], cache_of([100 + i, 7, 8]))
    store.put_prefix([1, 2, 3], None)
    assert store.take_prefix([100, 7, 8, 9])[1] == 0 and store.take_prefix([101, 7, 8, 9, 10])[1] == 3  # 100 went
    assert store.take_prefix([101, 7, 8])[1] == 0  # moved out by the take before
    cache, shared = store.take_prefix([102, 50, 51])
    assert shared == 1 and cache.length == 1 and store.take_prefix([102, 7, 8, 9])[1] == 3  # copied, stayed
    s = store.create()
    store.check_out(s.session_id)
    store.check_in(s, [5], cache_of([5, 6, 7]))
    assert s.cache.length == 0  # INV-1 for a one-token history


def test_hint_sessions_make_room_for_named_ones():
    """Sessions made for a cache hint (prompt_cache_key) never take a client's place: at capacity the
    least recently used idle one is forgotten; a busy one, or a named one, never is."""
    store = SessionStore(max_sessions=2)
    store.check_out("pck-a", create=True, hint=True)  # busy: kept
    store.create(session_id="pck-b", hint=True)
    store.create(session_id="named-1")  # full: the idle hint goes
    with pytest.raises(SessionNotFound):
        store.get("pck-b")
    with pytest.raises(TooManySessions):  # the busy hint and a named session remain
        store.create(session_id="named-2")
    a = store.get("pck-a")
    store.check_in(a, [1, 2], None)
    store.create(session_id="named-2")
    assert {store.get(n).session_id for n in ("named-1", "named-2")} == {"named-1", "named-2"}


def test_busy_not_found_and_empty_history(tiny_llm):
    store = tiny_llm.core.sessions
    sid = store.create().session_id
    with pytest.raises(InvalidRequest, match="no tokens"):
        tiny_llm.core.add_request(Submission(None, GREEDY, session_id=sid))
    store.append(sid, TURN1)
    tiny_llm.core.add_request(Submission(None, GREEDY, session_id=sid))
    with pytest.raises(SessionBusy):
        tiny_llm.core.add_request(Submission(None, GREEDY, session_id=sid))
    with pytest.raises(SessionBusy):
        store.append(sid, TURN2)
    with pytest.raises(SessionNotFound):
        tiny_llm.core.add_request(Submission(None, GREEDY, session_id="nope"))
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
    req = tiny_llm.core.add_request(Submission(None, GREEDY, session_id=sid))
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
