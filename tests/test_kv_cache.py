"""The KV cache's bookkeeping against brute force, with no model: every position's keys hold its own
position number, so after any sequence of forwards, rollbacks and settles the cache can be read back
and compared with what a query must see (the window written out here from its definition, StreamingLLM:
the first SINK positions and the last WINDOW, the query's own included) and with the memory bounds the
module promises (doubling growth, SINK + WINDOW + max(headroom, T − 1) slots for a windowed ring)."""
from __future__ import annotations

import random

import pytest
import torch
from transformers import Qwen3Config

from inference_engine.cache.kv_cache import GRANULE, KVCache, KVWindow

# head_dim 32 ≠ hidden 64 / 4 heads, as in Qwen3 itself (1024 / 16 heads, head_dim 128)
CONFIG = Qwen3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_hidden_layers=2,
                     vocab_size=16, intermediate_size=32)
LIKE = torch.zeros(1)


def _kv(start: int, T: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer [1, Hkv, T, D]: keys hold their position, values its negative."""
    pos = torch.arange(start, start + T, dtype=torch.float32)[None, None, :, None].expand(1, 2, T, 32)
    return [(pos.clone(), -pos.clone()) for _ in range(CONFIG.num_hidden_layers)]


def test_full_cache_writes_by_position_grows_by_doubling_and_trims_by_moving_the_end():
    cache = KVCache(CONFIG)
    cache.append(_kv(0, 1))
    first = cache.keys[0]
    for p in range(1, GRANULE):  # a decode step within the capacity allocates nothing
        cache.append(_kv(p, 1))
        assert cache.keys[0] is first and tuple(first.shape) == (1, 2, GRANULE, 32)
    buffer = cache.keys[0]
    cache.append(_kv(GRANULE, 1))
    assert cache.capacity == 2 * GRANULE and cache.keys[0] is not buffer  # doubled, not +1
    cache.append(_kv(GRANULE + 1, 3 * GRANULE))  # a long prefill: what it needs, in whole granules
    assert cache.capacity == 5 * GRANULE and cache.length == 4 * GRANULE + 1
    assert cache.trim(GRANULE + 1) == GRANULE + 1 and cache.length == 3 * GRANULE
    for (k, v), layer in zip(cache.layers(), range(CONFIG.num_hidden_layers)):
        assert torch.equal(k[0, 1, :, 0], torch.arange(3 * GRANULE, dtype=torch.float32)) and torch.equal(v, -k)
    assert cache.nbytes == 2 * CONFIG.num_hidden_layers * 2 * 5 * GRANULE * 32 * 4
    assert cache.trim(10 ** 6) == 3 * GRANULE and cache.length == 0


def test_a_config_without_head_dim_or_kv_heads_uses_hidden_over_heads():
    """GPT-2's config names neither head_dim nor num_key_value_heads (its attribute map gives the rest)."""
    from transformers import GPT2Config

    cache = KVCache(GPT2Config(n_embd=64, n_head=4, n_layer=3))
    cache.append([(torch.zeros(1, 4, 5, 16), torch.zeros(1, 4, 5, 16))] * 3)
    assert [tuple(k.shape) for k in cache.keys] == [(1, 4, GRANULE, 16)] * 3 and cache.length == 5


def _forward(cache: KVCache, T: int) -> None:
    """What models/fast.py does for a windowed cache: reserve, place, check every query's view, write."""
    start = cache.length
    cache.reserve(start + T, LIKE)
    slots = cache.place(start, T, LIKE.device)
    queries = start + torch.arange(T)[:, None]  # [T, 1]
    visible = cache.window.visible(cache.pos[None, :], queries)  # [T, capacity]
    for k, v in _kv(start, T):
        for keys, values in zip(cache.keys, cache.values):
            keys.index_copy_(2, slots, k)
            values.index_copy_(2, slots, v)
    S, W = cache.window.sink, cache.window.window
    for t in range(T):
        q = start + t
        want = {p for p in range(q + 1) if p < S or p > q - W}  # the definition, nothing of the module
        seen = visible[t].nonzero().flatten()
        assert sorted(cache.pos[seen].tolist()) == sorted(want), (q, cache.capacity)
        # what sits in those slots is the right position's keys and values
        assert torch.equal(cache.keys[1][0, 0, seen, 0], cache.pos[seen].float())
        assert torch.equal(cache.values[0][0, 1, seen, 3], -cache.pos[seen].float())
    cache.length = start + T


@pytest.mark.parametrize("sink,window,headroom", [(4, 60, 1), (0, 8, 3), (2, 5, 4), (3, 64, 9)])
def test_windowed_ring_against_the_window_definition(sink, window, headroom):
    """Random forwards (1..headroom+4 tokens), rollbacks of rejected drafts (up to T − 1), rollbacks
    to an earlier turn (any length) and settles: every query sees exactly its window, a rollback the
    ring cannot serve forgets everything (and one it can keeps the window), and the ring never holds
    more than SINK + WINDOW + max(headroom, T − 1) slots once it wraps."""
    rng = random.Random(sink * 100 + window)
    w = KVWindow(sink, window)
    cache = KVCache(CONFIG, window=w, headroom=headroom)
    for step in range(400):
        T = rng.randint(1, headroom + 4)
        _forward(cache, T)
        if cache.length > sink + window + T:  # wrapped: the ring's bound
            assert cache.capacity <= sink + window + max(headroom, T - 1)
        roll = rng.random()
        n = rng.randint(0, T - 1) if roll < 0.7 else rng.randint(0, cache.length) if roll < 0.8 else 0
        q = cache.length - n
        held = set(cache.pos[(cache.pos >= 0) & (cache.pos < q)].tolist())
        keeps = {p for p in range(q) if p < sink or p > q - window} <= held  # brute force: can it serve q?
        removed = cache.trim(n)
        assert (removed, cache.length) == ((n, q) if keeps else (q + n, 0)), (step, n, q)
        cache.settle()
        if cache.length > sink + window + headroom:
            assert cache.capacity == sink + window + headroom  # settled back to the steady ring


def test_window_with_no_room_to_spare_still_sees_its_window():
    """headroom 1 (plain decoding) and then a verify of 6 tokens: the ring grows for that forward
    and moves every held position to its slot under the new ring."""
    cache = KVCache(CONFIG, window=KVWindow(2, 6), headroom=1)
    for _ in range(40):
        _forward(cache, 1)
    assert cache.capacity == 2 + 6 + 1
    _forward(cache, 6)
    assert cache.capacity == 2 + 6 + 5
    cache.trim(5)
    cache.settle()
    assert cache.capacity == 2 + 6 + 1
    buffer = cache.keys[0]  # the tensor itself: a freed block's address may come back
    for _ in range(20):  # a steady ring: decode steps and two-token verifies allocate nothing
        _forward(cache, 1)
        _forward(cache, 2)
        cache.trim(1)
    assert cache.keys[0] is buffer and cache.capacity == 2 + 6 + 1
