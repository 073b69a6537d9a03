"""AsyncEngine under faults, in-process on the tiny Qwen3: cancellation at admission, a failing step,
a failing metrics observer, a dying engine thread, shutdown with streams open. Faults are real:
the running request's KV buffers are cut to the wrong width, or the core loses its scheduler."""
from __future__ import annotations

import asyncio

import pytest

from inference_engine.config import EngineConfig
from inference_engine.engine.async_engine import AsyncEngine
from inference_engine.engine.llm import LLM
from inference_engine.errors import EngineDead, SessionBusy, StepFailed
from inference_engine.types import EngineResult, FinishReason, SamplingParams, SpeculativeParams, Submission

PROMPT = [151644, 872, 198, 9707, 11, 1879]
LONG = SamplingParams(max_tokens=900, ignore_eos=True)
PLAIN = SpeculativeParams("none", 0)


@pytest.fixture()
def engine(tiny_loaded):
    e = AsyncEngine(LLM(tiny_loaded, EngineConfig(max_running=1, cost_curve=(1.0,) * 9)))
    yield e
    e.shutdown()


def break_running_cache(engine: AsyncEngine) -> None:
    """Engine thread: each running request's key buffers lose their last dimension, so the next
    forward raises inside torch."""
    def job() -> None:
        for r in engine.core.scheduler.running:
            if r.cache is not None and r.cache.keys:
                r.cache.keys = [k[..., :1] for k in r.cache.keys]

    engine._call(job).result(10)


async def _first_token(stream):
    async for item in stream:
        return item


async def _drain(stream) -> EngineResult:
    async for item in stream:
        if isinstance(item, EngineResult):
            return item


def test_cancel_while_admission_is_queued_never_hurts_the_engine(engine):
    """The bug: cancelling the caller cancelled the admission future, and the engine thread's later
    set_result raised InvalidStateError out of its loop. Now the request is aborted once it exists."""
    async def main():
        running = await engine.add(Submission(PROMPT, LONG, PLAIN))
        await _first_token(running)
        for _ in range(5):
            task = asyncio.ensure_future(engine.add(Submission(PROMPT, LONG, PLAIN)))
            await asyncio.sleep(0)  # admission job queued, not yet run
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # jobs run in order: after one no-op every admission has run (queueing its undo), after two every undo
        for _ in range(2):
            await asyncio.wrap_future(engine._call(lambda: None))
        assert engine.num_active == 1 and engine.num_waiting == 0 and engine.alive
        result = await running.abort()
        assert result.finish_reason == FinishReason.ABORT and engine.num_active == 0

    asyncio.run(main())


def test_failing_step_fails_only_its_requests(engine):
    async def main():
        victim = await engine.add(Submission(PROMPT, LONG, PLAIN, session_id=None))
        queued = await engine.add(Submission(PROMPT, SamplingParams(max_tokens=8, ignore_eos=True), PLAIN))
        await _first_token(victim)
        break_running_cache(engine)
        with pytest.raises(StepFailed) as e:
            await _drain(victim)
        assert e.value.http_status == 500 and "step" in e.value.message
        result = await _drain(queued)  # was waiting, not in the failed step: served normally
        assert result.finish_reason == FinishReason.LENGTH and len(result.token_ids) == 8
        assert engine.alive and engine.num_active == 0

    asyncio.run(main())


def test_failed_step_checks_the_session_in_without_its_cache(engine):
    async def main():
        info = await engine.create_session()
        sid = info.session_id
        await engine.append_tokens(sid, PROMPT)
        stream = await engine.add(Submission(None, LONG, PLAIN, session_id=sid))
        await _first_token(stream)
        with pytest.raises(SessionBusy):
            await engine.append_tokens(sid, [1])  # refused while the generate is admitted
        break_running_cache(engine)
        with pytest.raises(StepFailed):
            await _drain(stream)
        after = await engine.session_info(sid)
        assert not after.busy and after.kv_cached_tokens == 0 and after.history_length > len(PROMPT)
        again = await _drain(await engine.add(Submission(None, SamplingParams(max_tokens=4), PLAIN, session_id=sid)))
        assert len(again.token_ids) == 4  # the next turn re-prefills and works

    asyncio.run(main())


def test_failing_observer_does_not_stop_decoding(engine):
    calls = []

    def observer(stats):
        calls.append(stats)
        raise RuntimeError("a broken metrics backend")

    engine.on_step = observer

    async def main():
        return await _drain(await engine.add(Submission(PROMPT, SamplingParams(max_tokens=12, ignore_eos=True), PLAIN)))

    assert len(asyncio.run(main()).token_ids) == 12 and len(calls) >= 11 and engine.alive  # every step raised


def test_dead_engine_ends_every_await_and_says_why(engine):
    async def main():
        stream = await engine.add(Submission(PROMPT, LONG, PLAIN))
        await _first_token(stream)
        engine._call(lambda: setattr(engine.core, "scheduler", None)).result(10)  # the loop itself now fails
        with pytest.raises(EngineDead) as e:
            await asyncio.wait_for(_drain(stream), 10)
        assert "AttributeError" in e.value.message
        with pytest.raises(EngineDead):
            await asyncio.wait_for(engine.add(Submission(PROMPT, LONG, PLAIN)), 10)
        with pytest.raises(EngineDead):
            await asyncio.wait_for(engine.session_info("x"), 10)

    asyncio.run(main())
    assert not engine.alive and "restart" in engine._dead().message


def test_repeated_step_failures_kill_the_engine_after_a_bound(tiny_loaded, tiny_qwen3_dir):
    """A fault in every forward (here a projection of the wrong shape): each step fails its request,
    and after MAX_FAILED_STEPS in a row the engine stops taking work and says why."""
    from torch import nn

    from inference_engine.config import ModelConfig
    from inference_engine.engine.async_engine import MAX_FAILED_STEPS
    from inference_engine.models import load_model

    loaded = load_model(ModelConfig(model=str(tiny_qwen3_dir), device="cpu", dtype="float32"))  # ours to break
    engine = AsyncEngine(LLM(loaded, EngineConfig(max_running=1)))

    async def main():
        streams = [await engine.add(Submission(PROMPT, LONG, PLAIN)) for _ in range(MAX_FAILED_STEPS + 1)]
        block = engine.core.verifier.fast.blocks[0]
        await asyncio.wrap_future(engine._call(lambda: setattr(block, "o", nn.Linear(1, 1))))  # every forward fails now
        for stream in streams[:MAX_FAILED_STEPS]:
            with pytest.raises(StepFailed):
                await asyncio.wait_for(_drain(stream), 10)
        with pytest.raises(EngineDead):  # the one left waiting when the engine gave up
            await asyncio.wait_for(_drain(streams[-1]), 10)

    asyncio.run(main())
    assert not engine.alive and "in a row" in engine._dead().message
    engine.shutdown()


def test_shutdown_with_streams_open_tells_every_caller(engine):
    async def main():
        running = await engine.add(Submission(PROMPT, LONG, PLAIN))
        queued = await engine.add(Submission(PROMPT, LONG, PLAIN))
        await _first_token(running)
        await asyncio.get_running_loop().run_in_executor(None, engine.shutdown)
        a, b = await asyncio.wait_for(_drain(running), 10), await asyncio.wait_for(_drain(queued), 10)
        assert a.finish_reason == b.finish_reason == FinishReason.ABORT and b.token_ids == []
        with pytest.raises(EngineDead):
            await engine.add(Submission(PROMPT, LONG, PLAIN))

    asyncio.run(main())


def test_abort_all_reports_abort_and_frees_everything(engine):
    async def main():
        streams = [await engine.add(Submission(PROMPT, LONG, PLAIN)) for _ in range(3)]
        await _first_token(streams[0])
        assert await engine.abort_all() == 3
        results = [await _drain(s) for s in streams]
        assert {r.finish_reason for r in results} == {FinishReason.ABORT} and engine.num_active == 0

    asyncio.run(main())


def test_admission_of_several_choices_is_all_or_none(tiny_loaded):
    """n choices are admitted in one engine job: when the queue has room for only some of them, the
    refusal (429) leaves none of them queued, and the one valid request still runs to the end."""
    from inference_engine.errors import Overloaded

    e = AsyncEngine(LLM(tiny_loaded, EngineConfig(max_running=1, max_waiting=2, cost_curve=(1.0,) * 9)))
    short = SamplingParams(max_tokens=4, ignore_eos=True)
    try:
        async def main():
            running = await e.add(Submission(PROMPT, LONG, PLAIN))
            await _first_token(running)
            with pytest.raises(Overloaded):
                await e.add_all([Submission(PROMPT, short, PLAIN) for _ in range(3)])
            assert e.num_waiting == 0 and e.num_active == 1
            again = await e.add_all([Submission(PROMPT, short, PLAIN) for _ in range(2)])  # room for two
            assert [len((await _drain(s)).token_ids) for s in again] == [4, 4]
            await running.abort()

        asyncio.run(main())
    finally:
        e.shutdown()
