"""Sink + window KV (`--kv-window SINK,WINDOW`): the windowed model is defined independently here
as the transformers model over the whole sequence under a banded mask (each query sees the first
SINK positions and the last WINDOW, its own included); the engine must produce exactly its greedy
tokens, on the fast path and the eager path, plain and speculating (drafts accepted and rejected),
across session turns, while a session never holds more than (SINK + WINDOW + k + 1) positions."""
from __future__ import annotations

import pytest
import torch

from inference_engine.types import SamplingParams, SpeculativeParams, Submission
from test_lossless_models import (  # noqa: F401  (fixtures)
    PLAIN, SMALL_PROMPT, add_mix, fresh_llm, run_steps, small_loaded, small_qwen3_dir, taught_variant,
)

WINDOW = (2, 6)
N = 40  # tokens generated: several windows past the prompt


def reference(loaded, prompt: list[int], n: int, window: tuple[int, int]) -> list[int]:
    """Greedy tokens of the windowed model, recomputing the whole sequence each step (no cache)."""
    (sink, width), model, ids = window, loaded.model, list(prompt)
    for _ in range(n):
        L = len(ids)
        key, query = torch.arange(L)[None, :], torch.arange(L)[:, None]
        allowed = (key <= query) & ((key < sink) | (query - key < width))  # [L, L], written apart from KVWindow
        mask = torch.zeros(L, L, dtype=model.dtype).masked_fill(~allowed, torch.finfo(model.dtype).min)
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids]), attention_mask=mask[None, None], use_cache=False).logits
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


def ask(prompt, spec=PLAIN, window=WINDOW, n=N, **admission) -> Submission:
    """Greedy, `n` tokens, under `window` (sink, window); (0, 0): the full cache."""
    return Submission(prompt, SamplingParams(max_tokens=n, ignore_eos=True), spec, kv_window=window, **admission)


@pytest.fixture(scope="module")
def expected(small_loaded):
    return reference(small_loaded, SMALL_PROMPT, N, WINDOW)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
def test_plain_equals_the_windowed_model(small_loaded, expected, fast):
    llm = fresh_llm(small_loaded, fast_path=fast, prefix_cache=False)
    out, _ = run_steps(llm, ask(SMALL_PROMPT))
    assert out == expected
    full, _ = run_steps(llm, ask(SMALL_PROMPT, window=(0, 0)))
    assert full != expected  # the window is in effect: the full cache writes something else


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
def test_spec_equals_plain_under_the_window(small_loaded, expected, fast):
    """Suffix drafts from the right text with every 6th token wrong: accepted runs, then a rejection
    whose rollback must not cost a position the window still needs."""
    total: dict[str, int] = {}
    for k in (1, 3, 8):
        llm = fresh_llm(small_loaded, fast_path=fast, prefix_cache=False)
        llm.core.speculator.suffix_for("").add_sequence(SMALL_PROMPT + taught_variant(expected))
        out, steps = run_steps(llm, ask(SMALL_PROMPT, spec=SpeculativeParams("suffix", k)))
        assert out == expected, k
        add_mix(total, steps)
    assert total.get("full", 0) and total.get("partial", 0) + total.get("rejected", 0), total


def test_window_wider_than_the_text_is_the_full_model(small_loaded):
    llm = fresh_llm(small_loaded, prefix_cache=False)
    full, _ = run_steps(llm, ask(SMALL_PROMPT, window=(0, 0), n=24))
    wide, _ = run_steps(llm, ask(SMALL_PROMPT, window=(4, 64), n=24))
    assert wide == full


def test_session_turns_hold_the_window_and_its_bytes(small_loaded):
    """Three turns of one session: each turn's output equals a fresh request over the whole history
    under the same window; the cache between steps never holds more than SINK + WINDOW + k + 1
    positions (kv_bytes, to the byte), and a later turn reuses it (cached tokens > 0)."""
    k, (S, W) = 4, WINDOW
    llm = fresh_llm(small_loaded, prefix_cache=False)
    ref = fresh_llm(small_loaded, prefix_cache=False)
    llm.core.sessions.create(session_id="s")
    history = list(SMALL_PROMPT)
    per_pos = None
    for turn in range(3):
        req = llm.core.add_request(ask(history, SpeculativeParams("ngram", k), n=12, session_id="s"))
        while not req.finished:
            llm.core.step()
            c = req.cache
            if c is not None and c.keys:
                per_pos = per_pos or c.nbytes // c.capacity
                assert c.nbytes <= (S + W + k + 1) * per_pos, (turn, c.capacity)
        assert (req.cached_tokens > 0) == (turn > 0)
        fresh, _ = run_steps(ref, ask(history, n=12))
        assert req.output_ids == fresh, turn
        history = history + req.output_ids + [40, 1079]  # the next user message
    s = llm.core.sessions.get("s")
    assert s.kv_bytes <= (S + W + k + 1) * per_pos


def test_rewinding_into_evicted_positions_prefills_again(small_loaded):
    """A turn that edits the history inside the evicted middle cannot reuse the cache (the window
    would be missing positions): it forgets it and the output is still the windowed model's."""
    llm = fresh_llm(small_loaded, prefix_cache=False)
    llm.core.sessions.create(session_id="s")
    first, _ = run_steps(llm, ask(SMALL_PROMPT, n=20, session_id="s"))
    edited = SMALL_PROMPT + first[:5] + [7, 8, 9]
    req = llm.core.add_request(ask(edited, n=8, session_id="s"))
    assert req.cached_tokens == 0
    while not req.finished:
        llm.core.step()
    assert req.output_ids == reference(small_loaded, edited, 8, WINDOW)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
def test_batched_rows_keep_their_own_windows(small_loaded, expected, fast):
    """Two windowed requests and a full one decode in one batched forward (right padding, ring
    slots per row): each gets what it gets alone."""
    llm = fresh_llm(small_loaded, prefix_cache=False, fast_path=fast)
    full_alone, _ = run_steps(fresh_llm(small_loaded, prefix_cache=False, fast_path=fast), ask(SMALL_PROMPT, window=(0, 0)))
    longer = SMALL_PROMPT + [40, 1079]
    reqs = [llm.core.add_request(ask(SMALL_PROMPT, SpeculativeParams("ngram", 3))),
            llm.core.add_request(ask(longer)),
            llm.core.add_request(ask(SMALL_PROMPT, window=(0, 0)))]
    batched = 0
    while not all(r.finished for r in reqs):
        batched = max(batched, llm.core.step().num_running)
    assert batched == 3
    assert reqs[0].output_ids == expected and reqs[2].output_ids == full_alone
    assert reqs[1].output_ids == reference(small_loaded, longer, N, WINDOW)


def test_over_http_and_grpc(small_loaded, expected):
    """The `kv_window` extension on /v1/completions (the openai client's extra_body), a bad one
    refused with the error envelope; a gRPC session created with a window keeps it per turn."""
    import grpc
    import openai

    from grpc_server import LiveGrpc
    from http_server import openai_client, serving
    from inference_engine.config import EngineConfig
    from inference_engine.rpc.pb.kakeya.v1 import runtime_pb2 as pb
    from inference_engine.rpc.pb.kakeya.v1 import runtime_pb2_grpc as pb_grpc

    with serving(small_loaded, EngineConfig(prefix_cache=False, kv_window=(0, 64))) as (server, engine):
        client = openai_client(server)
        ask = dict(model=engine.info.name, prompt=SMALL_PROMPT, max_tokens=N, temperature=0)
        out = client.completions.create(**ask, extra_body={"kv_window": {"sink": 2, "window": 6}, "ignore_eos": True,
                                                           "return_token_ids": True, "speculative": {"method": "none"}})
        assert out.choices[0].token_ids == expected
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(**ask, extra_body={"kv_window": {"sink": -1, "window": 6}})
        assert "kv_window" in str(e.value)
        with LiveGrpc(engine) as live, grpc.insecure_channel(live.target) as channel:
            stub = pb_grpc.RuntimeServiceStub(channel)
            sid = stub.CreateSession(pb.CreateSessionRequest(kv_window=pb.KVWindow(sink=2, window=6))).session_id
            stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=SMALL_PROMPT))
            frames = list(stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=N,
                                                           speculative=pb.SpeculativeOptions(method="none"))))
            assert [t for f in frames[:-1] for t in f.tokens.token_ids] == expected
            info = stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=sid))
            per_pos = engine.core.sessions.get(sid).cache.nbytes // engine.core.sessions.get(sid).cache.capacity
            assert info.kv_bytes <= (2 + 6 + 1) * per_pos and info.kv_cached_tokens == len(SMALL_PROMPT) + N - 1
            with pytest.raises(grpc.RpcError) as e:
                stub.CreateSession(pb.CreateSessionRequest(kv_window=pb.KVWindow(sink=0, window=10**6)))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("chunk", [5, 512])
def test_long_prefill_in_chunks(small_loaded, monkeypatch, chunk):
    """A windowed prompt longer than PREFILL_CHUNK is fed in pieces (the ring stays small), or in
    one forward four times wider than the window (the ring grows for it); either way the tokens
    are the windowed model's."""
    from inference_engine.engine import verifier

    monkeypatch.setattr(verifier, "PREFILL_CHUNK", chunk)
    prompt = SMALL_PROMPT * 3  # 24 tokens: four chunks and a tail, or one forward
    llm = fresh_llm(small_loaded, prefix_cache=False)
    before = llm.core.verifier.forwards
    out, _ = run_steps(llm, ask(prompt, n=10))
    assert out == reference(small_loaded, prompt, 10, WINDOW)
    assert llm.core.verifier.forwards - before == 10 + (4 if chunk == 5 else 0)
