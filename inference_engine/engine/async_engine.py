"""AsyncEngine: the engine loop on its own thread, bridged to asyncio.

Forward passes never run on the event loop. Callers submit work through an inbox the
engine thread drains between steps; tokens and the final result come back through a
per-request asyncio.Queue fed with call_soon_threadsafe.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Optional, Sequence, Union

from ..errors import EngineDead
from ..types import EngineResult, SamplingParams, SpeculativeParams, StepStats, TokenLogprob
from .llm import LLM
from .request import Request


Token = tuple[int, Optional[TokenLogprob]]  # a generated token id and, if asked for, its logprob


@dataclass(slots=True)
class _Stream:
    request: Request
    loop: asyncio.AbstractEventLoop
    queue: "asyncio.Queue[Union[Token, EngineResult, BaseException]]"

    def put(self, item: Union[Token, EngineResult, BaseException]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncEngine:
    def __init__(self, llm: LLM, on_step: Optional[Callable[[StepStats], None]] = None):
        self.llm, self.core = llm, llm.core
        self.on_step = on_step
        self._inbox: "queue.SimpleQueue[Callable[[], None]]" = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._stop = False
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="kakeya-engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self.error is None and self._thread.is_alive()

    @property
    def num_running(self) -> int:
        return len(self.core.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.core.scheduler.waiting)

    def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)

    # -- engine thread ---------------------------------------------------------

    def _call(self, fn: Callable[[], object]) -> "concurrent.futures.Future":
        """Run fn on the engine thread between steps; its result or exception lands in the future."""
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def job() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

        if not self.alive:
            fut.set_exception(EngineDead("the engine has stopped; restart the server"))
            return fut
        self._inbox.put(job)
        self._wake.set()
        return fut

    def _run(self) -> None:
        while not self._stop:
            while not self._inbox.empty():
                self._inbox.get_nowait()()
            if not self.core.has_work:
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            try:
                stats = self.core.step()
            except BaseException as e:  # noqa: BLE001 - a failed forward kills the engine, not the server
                self.error = e
                for stream in self._streams.values():
                    stream.put(EngineDead(f"engine failure: {type(e).__name__}: {e}"))
                self._streams.clear()
                return
            self._finish_done()
            if self.on_step:
                self.on_step(stats)

    def _finish_done(self) -> None:
        for rid in [rid for rid, s in self._streams.items() if s.request.finished]:
            stream = self._streams.pop(rid)
            stream.put(self.llm.result(stream.request))

    # -- asyncio side ----------------------------------------------------------

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        spec: Optional[SpeculativeParams] = None,
        request_id: Optional[str] = None,
        session_id: Optional[str] = None,
    ) -> AsyncIterator[Union[Token, EngineResult]]:
        """Yields (token id, logprob or None) per generated token, then the EngineResult. Cancelling the consumer
        (client disconnect) aborts the request on the engine within one step."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        holder: list[_Stream] = []

        def on_token(tok: int) -> bool:  # engine thread, after the token's logprob was recorded
            req = holder[0].request
            holder[0].put((tok, req.logprobs[len(req.output_ids) - 1] if req.sampling.logprobs is not None else None))
            return False

        def add() -> str:
            req = self.core.add_request(prompt_ids, sampling, spec, on_token, request_id, session_id)
            holder.append(_Stream(req, loop, q))
            self._streams[req.request_id] = holder[0]
            return req.request_id

        rid = await asyncio.wrap_future(self._call(add))
        finished = False
        try:
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, EngineResult):
                    finished = True
                    return
        finally:
            if not finished:
                # wait until the engine has released the request, so its session is checked in
                # before the caller answers (a client's next turn must not find it busy)
                done = self.abort(rid)
                try:
                    await asyncio.shield(asyncio.wrap_future(done))
                except BaseException:  # noqa: BLE001 - cancelled again or engine dead: nothing to wait for
                    pass

    def abort(self, request_id: str) -> "concurrent.futures.Future":
        def job() -> None:
            self._streams.pop(request_id, None)
            self.core.abort(request_id)

        return self._call(job)
