"""SuffixProposer: frequency-scored drafts from past sequences and the request's own history,
with a FIFO memory bound on the global index."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from kv_cache_proposer.base import EMPTY
from kv_cache_proposer.suffix import SuffixProposer


@dataclass
class Req:
    request_id: str
    token_ids: list[int] = field(default_factory=list)


def draft(p: SuffixProposer, history: list[int], k: int = 8, rid: str = "r") -> list[int]:
    return p.propose([Req(rid, history)], [k])[0].tokens


def index_tokens(p: SuffixProposer) -> set[int]:
    """Every token that appears in the global index, as context or continuation."""
    return {t for key, nxt in p._index.items() for t in (*key, *nxt)}


def rebuilt(p: SuffixProposer) -> dict:
    """The global index built from scratch over the sequences p still holds."""
    fresh = SuffixProposer(max_tokens=p.max_tokens, max_n=p.max_n, min_n=p.min_n)
    for seq in p._sequences:
        fresh.add_sequence(seq)
    return fresh._index


def test_continuation_from_past_sequence_is_drafted():
    p = SuffixProposer()
    p.add_sequence([1, 2, 3, 4, 5, 6, 7])
    assert draft(p, [9, 9, 2, 3]) == [4, 5, 6, 7]
    d = p.propose([Req("r", [9, 9, 2, 3])], [8])[0]
    assert d.probs is None


def test_no_match_or_zero_k_gives_empty():
    p = SuffixProposer()
    p.add_sequence([1, 2, 3, 4])
    assert p.propose([Req("a", [7, 8, 9]), Req("b", [1, 2])], [4, 0]) == [EMPTY, EMPTY]
    assert p.propose([Req("c", [1])], [4]) == [EMPTY]  # shorter than min_n


def test_most_frequent_continuation_wins():
    p = SuffixProposer()
    p.add_sequence([1, 2, 3, 7])
    for _ in range(3):
        p.add_sequence([1, 2, 3, 8])
    assert draft(p, [5, 1, 2, 3], k=1) == [8]


def test_longest_suffix_match_beats_shorter_frequent_one():
    p = SuffixProposer()
    for _ in range(3):
        p.add_sequence([0, 3, 4, 8])  # (3, 4) -> 8 is frequent ...
    p.add_sequence([1, 2, 3, 4, 7])  # ... but (1, 2, 3, 4) -> 7 is the longer match
    assert draft(p, [1, 2, 3, 4], k=1) == [7]
    assert draft(p, [6, 3, 4], k=1, rid="other") == [8]


def test_draft_extends_context_with_drafted_tokens():
    p = SuffixProposer()
    p.add_sequence([1, 2, 3, 4, 5])
    p.add_sequence([3, 4, 9])
    p.add_sequence([3, 4, 9])  # (3, 4) alone says 9; with the drafted 4, (1, 2, 3, 4) says 5
    assert draft(p, [1, 2, 3], k=3) == [4, 5]


def test_own_history_is_used():
    p = SuffixProposer()
    history = [10, 11, 12, 13, 14, 20, 21, 10, 11]
    assert draft(p, history, k=3) == [12, 13, 14]
    # Later calls index only the newly generated tokens and still see the earlier ones.
    assert draft(p, history + [12, 13, 14, 20], k=2) == [21, 10]
    assert p._live["r"].indexed == 13
    whole = SuffixProposer()
    whole.add_sequence(history + [12, 13, 14, 20])
    assert p._live["r"].index == whole._index  # incremental == built in one go


def test_own_history_merges_with_past_and_wins_ties():
    p = SuffixProposer()
    p.add_sequence([1, 2, 30])
    assert draft(p, [1, 2, 40, 5, 1, 2], k=1) == [40]  # 1 vs 1: own history wins the tie
    p.add_sequence([1, 2, 30])
    assert draft(p, [1, 2, 40, 5, 1, 2], k=1, rid="r2") == [30]  # 2 past vs 1 own


def test_min_confidence_stops_on_ambiguous_context():
    seqs = [[1, 2, 3, t] for t in (10, 11, 12, 13, 14)]
    strict = SuffixProposer(min_confidence=0.3)
    loose = SuffixProposer(min_confidence=0.2)
    for s in seqs:
        strict.add_sequence(s)
        loose.add_sequence(s)
    # Each continuation has a 1/5 share: below 0.3, exactly at 0.2.
    assert strict.propose([Req("r", [1, 2, 3])], [4]) == [EMPTY]
    assert draft(loose, [1, 2, 3], k=4) == [10]  # first seen wins the tie, then no continuation


def test_min_confidence_stops_midway():
    p = SuffixProposer(min_confidence=0.6)
    p.add_sequence([1, 2, 3, 4, 5])
    p.add_sequence([9, 2, 3, 4, 6])  # (2, 3) -> 4 is sure; then (2, 3, 4) splits 5 / 6
    assert draft(p, [0, 2, 3], k=5) == [4]


def test_never_more_than_k_tokens():
    p = SuffixProposer()
    p.add_sequence(list(range(100)))
    for k in (1, 2, 5):
        assert draft(p, [0, 1, 2], k=k) == list(range(3, 3 + k))
    out = p.propose([Req("a", [0, 1]), Req("b", [50, 51])], [3, 1])
    assert [d.tokens for d in out] == [[2, 3, 4], [52]]


def test_memory_bound_evicts_oldest_sequences():
    p = SuffixProposer(max_tokens=10)
    p.add_sequence([1, 2, 3, 4])
    p.add_sequence([5, 6, 7, 8])
    assert p.num_tokens == 8
    assert len(p._index) == 3 + 3  # (a, b), (b, c), (a, b, c) per 4-token sequence
    p.add_sequence([9, 10, 11])  # 11 > 10: the oldest sequence goes
    assert p.num_tokens == 7
    assert len(p._index) == 3 + 1  # the evicted sequence's 3 keys are gone
    assert list(p._sequences) == [(5, 6, 7, 8), (9, 10, 11)]
    assert not index_tokens(p) & {1, 2, 3, 4}
    assert draft(p, [1, 2]) == []
    assert draft(p, [5, 6], rid="b") == [7, 8]
    p.add_sequence([12, 13, 14, 15, 16, 17])  # 13 > 10: evicts [5..8]; 9 fits with [9..11]
    assert p.num_tokens == 9 <= p.max_tokens
    assert index_tokens(p) == {9, 10, 11, 12, 13, 14, 15, 16, 17}
    assert p._index == rebuilt(p)  # no leftovers (not even zero counts) from evicted ones


def test_eviction_decrements_shared_contexts():
    p = SuffixProposer(max_tokens=8)
    p.add_sequence([1, 2, 3, 4])
    p.add_sequence([1, 2, 3, 5])
    assert p._index[(1, 2, 3)] == {4: 1, 5: 1}
    p.add_sequence([1, 2, 3, 6])  # evicts [1, 2, 3, 4]: its count goes, the others stay
    assert p._index[(1, 2, 3)] == {5: 1, 6: 1}
    assert p._index[(1, 2)] == {3: 2}
    p.add_sequence([7, 8, 9, 7])
    p.add_sequence([7, 8, 9, 7])  # both [1, 2, 3, x] gone: their keys are deleted, not zeroed
    assert set(p._index) == {(7, 8), (8, 9), (7, 8, 9)}
    assert p._index[(7, 8, 9)] == {7: 2}


def test_over_long_sequence_keeps_its_tail():
    p = SuffixProposer(max_tokens=6)
    p.add_sequence([1, 2, 3])
    p.add_sequence(list(range(10, 20)))
    assert p.num_tokens == 6
    assert list(p._sequences) == [tuple(range(14, 20))]
    assert p._index == rebuilt(p)
    assert draft(p, [10, 11]) == []
    assert draft(p, [14, 15], rid="b") == [16, 17, 18, 19]


def test_zero_budget_and_empty_sequence_store_nothing():
    p = SuffixProposer(max_tokens=0)
    p.add_sequence([1, 2, 3])
    q = SuffixProposer()
    q.add_sequence([])
    assert p.num_tokens == q.num_tokens == 0
    assert not p._index and not q._index


def test_release_drops_request_state():
    p = SuffixProposer()
    history = [1, 2, 3, 4, 1, 2]
    assert draft(p, history, k=2, rid="a") == [3, 4]
    assert "a" in p._live
    p.rewind("a", 3)  # nothing to undo: token_ids never contain rejected drafts
    assert draft(p, history, k=2, rid="a") == [3, 4]
    p.release("a")
    assert "a" not in p._live
    p.release("a")  # releasing twice, or an unknown id, is harmless
    p.rewind("unknown", 1)
    # A new request under the same id sees only its own history, not the released one's.
    assert draft(p, [7, 1, 2], rid="a") == []


def test_shrunk_history_is_reindexed():
    p = SuffixProposer()
    assert draft(p, [1, 2, 3, 4, 1, 2], k=4, rid="a") == [3, 4, 1, 2]
    assert draft(p, [5, 6, 7, 5, 6], k=3, rid="a") == [7, 5, 6]  # shorter: old state is dropped


@pytest.mark.parametrize("kwargs", [
    {"max_tokens": -1}, {"min_n": 0}, {"max_n": 1, "min_n": 2}, {"min_confidence": 1.5},
])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        SuffixProposer(**kwargs)
