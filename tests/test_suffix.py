"""SuffixProposer: SuffixDecoding's drafts (arXiv 2411.04975) from past sequences and the request's
own history, checked against a brute-force walk written here from the paper's rules, with a FIFO
memory bound on the global index."""
from __future__ import annotations

import itertools
import math
import random
from collections import Counter
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
    assert draft(p, [9, 9, 2, 3]) == [4, 5]  # a two-token match drafts two (alpha 1)
    assert draft(p, [9, 1, 2, 3, 4], rid="r2") == [5, 6, 7]  # four would be allowed: the text ends
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
    assert draft(p, history, k=3) == [12, 13]  # matched (10, 11): two tokens
    # Later calls index only the newly generated tokens and still see the earlier ones.
    assert draft(p, history + [12, 13, 14, 20], k=2) == [21, 10]
    assert p._live["r"].indexed == 13
    whole = SuffixProposer()
    whole.add_sequence(history + [12, 13, 14, 20])
    assert p._live["r"].index == whole._index  # incremental == built in one go


def test_own_and_past_drafts_compete_on_expected_accepted_tokens():
    p = SuffixProposer()
    p.add_sequence([1, 2, 30])
    assert draft(p, [1, 2, 40, 5, 1, 2], k=1) == [40]  # both sure (score 1): own history wins the tie
    assert draft(p, [1, 2, 40, 5, 1, 2], k=2, rid="r1") == [40, 5]  # own 2 expected tokens, past 1
    p.add_sequence([1, 2, 30])
    # own history is split 40 / 41 (score 0.5), the past is sure of 30 (score 1): the past wins
    assert draft(p, [1, 2, 40, 5, 1, 2, 41, 6, 1, 2], k=1, rid="r2") == [30]


def test_min_prob_stops_on_ambiguous_context():
    seqs = [[1, 2, 3, t] for t in (10, 11, 12, 13, 14)]
    strict = SuffixProposer(min_prob=0.3)
    loose = SuffixProposer(min_prob=0.2)
    for s in seqs:
        strict.add_sequence(s)
        loose.add_sequence(s)
    # Each continuation has a 1/5 share: below 0.3, exactly at 0.2.
    assert strict.propose([Req("r", [1, 2, 3])], [4]) == [EMPTY]
    assert draft(loose, [1, 2, 3], k=4) == [10]  # first seen wins the tie, then no continuation


def test_path_probability_is_the_product_of_shares():
    p = SuffixProposer()  # min_prob 0.1
    prefix = list(range(50, 58))  # a full-depth match: the draft may run to k
    for bits in itertools.product((1, 2), repeat=4):  # each step splits 2 ways: 0.5, 0.25, 0.125, 0.0625
        p.add_sequence(prefix + list(bits))
    assert draft(p, prefix, k=8) == [1, 1, 1]  # the fourth would take the path below 0.1


def test_min_prob_stops_midway():
    p = SuffixProposer(min_prob=0.6)
    p.add_sequence([1, 2, 3, 4, 5])
    p.add_sequence([9, 2, 3, 4, 6])  # (2, 3) -> 4 is sure; then (2, 3, 4) splits 5 / 6
    assert draft(p, [0, 2, 3], k=5) == [4]


def test_never_more_than_k_tokens():
    p = SuffixProposer()
    p.add_sequence(list(range(100)))
    for k in (1, 2, 5, 12):  # a match at the full depth (8) may be longer: up to k
        assert draft(p, list(range(10)), k=k) == list(range(10, 10 + k))
    out = p.propose([Req("a", [0, 1]), Req("b", [50, 51])], [3, 1])
    assert [d.tokens for d in out] == [[2, 3], [52]]


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
    assert draft(p, [14, 15], rid="b") == [16, 17]


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
    assert draft(p, [1, 2, 3, 4, 1, 2], k=4, rid="a") == [3, 4]
    assert draft(p, [5, 6, 7, 5, 6], k=3, rid="a") == [7, 5]  # shorter: old state is dropped


@pytest.mark.parametrize("kwargs", [
    {"max_tokens": -1}, {"min_n": 0}, {"max_n": 1, "min_n": 2}, {"min_prob": 1.5}, {"alpha": 0},
])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        SuffixProposer(**kwargs)


def brute_draft(seqs: list[list[int]], history: list[int], k: int, max_n=8, min_n=2, min_prob=0.1, alpha=1.0):
    """SuffixDecoding's rules over plain lists, nothing of the proposer: counts by scanning every
    text, the longest suffix first; the walk stops below min_prob or at alpha × the first match;
    the own draft and the past one compete on the sum of path probabilities (a tie: own)."""
    def counts(texts, ctx):
        for n in range(min(max_n, len(ctx)), min_n - 1, -1):
            c = Counter(t[i] for t in texts for i in range(n, len(t)) if t[i - n:i] == ctx[-n:])
            if c:
                return n, c  # insertion order: the continuation seen first wins a tie
        return 0, Counter()

    def walk(texts):
        ctx, tokens, prob, score, limit = list(history[-max_n:]), [], 1.0, 0.0, k
        while len(tokens) < limit:
            n, c = counts(texts, ctx)
            if not c:
                break
            if not tokens and n < max_n:
                limit = min(k, math.ceil(alpha * n))
            best = max(c, key=c.__getitem__)
            prob *= c[best] / sum(c.values())
            if prob < min_prob:
                break
            tokens.append(best)
            ctx.append(best)
            score += prob
        return tokens, score

    mine, past = walk([history]), walk(seqs)
    return (mine if mine[1] >= past[1] else past)[0]


@pytest.mark.parametrize("seed", range(6))
def test_drafts_equal_the_brute_force_walk(seed):
    rng = random.Random(seed)
    for case in range(60):
        vocab = rng.randint(2, 6)
        p = SuffixProposer(alpha=rng.choice([1.0, 1.5, 2.0]), min_prob=rng.choice([0.1, 0.3]))
        seqs = [[rng.randrange(vocab) for _ in range(rng.randint(3, 30))] for _ in range(rng.randint(0, 4))]
        for seq in seqs:
            p.add_sequence(seq)
        history = [rng.randrange(vocab) for _ in range(rng.randint(2, 40))]
        for grown in (history[: len(history) // 2], history):  # the own index built in two goes
            k = rng.randint(1, 10)
            want = brute_draft(seqs, grown, k, min_prob=p.min_prob, alpha=p.alpha)
            assert draft(p, grown, k=k, rid="live") == want, (seed, case, grown, k)
