"""AsyncEngine: the engine loop on its own thread, bridged to asyncio; the edges' only door to the core.

The core is owned by the engine thread. Everything an edge asks of it (admit a request, abort it,
create/append/inspect/close a session) is a job the engine thread runs between steps, so no edge
ever races the step loop, and a job's typed error reaches its caller before any response header.
Tokens and the final result come back through a per-request asyncio.Queue (call_soon_threadsafe).

Failure rules: a step that raises fails only the requests in it (StepFailed to their callers);
an error in a job or in `on_step` is the caller's or is logged; if the thread itself ever ends,
every pending job and stream gets EngineDead, so no caller waits forever.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from typing import Callable, Optional, Sequence

from ..errors import ContextLengthExceeded, EngineDead, InvalidRequest, SessionNotFound, StepFailed
from ..types import EngineResult, SpecStats, StepStats, Submission
from .llm import LLM
from .request_stream import RequestStream, SessionInfo, _Stream
from .validation import Limits, check_kv_window, check_token_ids

log = logging.getLogger(__name__)

MAX_FAILED_STEPS = 5  # consecutive failing steps after which the engine declares itself dead
MAX_LABEL_CHARS = 256  # a session's client_label (shown back in its info; not a storage place)
MAX_EOS_IDS = 64       # a session's extra stop tokens


class AsyncEngine:
    def __init__(self, llm: LLM, on_step: Optional[Callable[[StepStats], None]] = None):
        self.llm, self.core = llm, llm.core
        self.on_step = on_step
        self._inbox: "queue.SimpleQueue[tuple[Callable[[], object], concurrent.futures.Future]]" = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders "is it dead?" against putting a job in the inbox
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._stop = False
        self._failed_steps = 0
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="kakeya-engine", daemon=True)
        self._thread.start()

    # -- what the edges may read -------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.error is None and self._thread.is_alive()

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def info(self):
        return self.llm.info

    @property
    def limits(self) -> Limits:
        return self.core.limits

    @property
    def num_running(self) -> int:
        return len(self.core.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.core.scheduler.waiting)

    @property
    def num_active(self) -> int:
        """Requests admitted and not yet finished, queued or decoding."""
        return len(self._streams)

    @property
    def num_sessions(self) -> int:
        return self.core.sessions.num_sessions

    @property
    def cache_bytes(self) -> int:
        return self.core.sessions.total_bytes

    @property
    def kv_bytes_per_cached_token(self) -> float:
        """What a cached token really costs: held KV bytes (spare capacity included) ÷ cached positions."""
        tokens = self.core.sessions.cached_tokens
        return self.cache_bytes / tokens if tokens else 0.0

    @property
    def suffix_index_tokens(self) -> int:
        """Tokens indexed for suffix drafting, over every tenant's index."""
        return self.core.speculator.suffix_index_tokens

    @property
    def cache_usage(self) -> float:
        """cache_bytes as a fraction of the store's byte budget (--session-cache-bytes)."""
        return self.cache_bytes / max(self.core.config.session_cache_bytes, 1)

    async def health(self) -> dict:
        """What /healthz adds. decode_path: eager | fast | compiling | compiled (`--compile` swaps its
        graph in when ready) | graphs (CUDA graphs replay one-token steps)."""
        return {"decode_path": self.core.verifier.path}

    async def prepare_grammar(self, grammar: str) -> None:
        """Compile a grammar in a worker thread (an invalid one raises InvalidRequest here), so that
        the engine thread only copies it when the request is admitted."""
        if self.core.grammars is not None:  # else admission says there is no tokenizer to compile with
            await asyncio.to_thread(self.core.grammars.prepare, grammar)

    # -- engine thread ---------------------------------------------------------

    def _call(self, fn: Callable[[], object]) -> "concurrent.futures.Future":
        """Run fn on the engine thread between steps; its result or exception lands in the future."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self.error is not None or self._stop:
                fut.set_exception(self._dead())
                return fut
            self._inbox.put((fn, fut))
        self._wake.set()
        return fut

    def dead_error(self) -> EngineDead:
        """Why this engine takes no more work (for an edge to raise)."""
        return self._dead()

    def _dead(self) -> EngineDead:
        if self.error is None:
            return EngineDead("the engine has stopped")
        return EngineDead(f"the engine has failed ({type(self.error).__name__}: {self.error}); restart the server")

    def _run(self) -> None:
        try:
            while not self._stop:
                self._run_jobs()
                if not self.core.has_work:
                    self._wake.wait(0.1)
                    self._wake.clear()
                    continue
                self._step()
        except BaseException as e:  # noqa: BLE001 - a bug in the loop itself: say so, strand nobody
            log.exception("engine thread failed")
            self.error = e
        finally:
            with self._lock:
                self._stop = True
            self._run_jobs(fail=True)
            for stream in self._streams.values():
                stream.put(self._dead())
            self._streams.clear()

    def _run_jobs(self, fail: bool = False) -> None:
        while True:
            try:
                fn, fut = self._inbox.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue  # its caller gave up before it ran
            if fail:
                fut.set_exception(self._dead())
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

    def _step(self) -> None:
        try:
            stats = self.core.step()
        except Exception as e:  # noqa: BLE001 - fails the requests of this step, not the engine
            self._fail_step(e)
            return
        self._failed_steps = 0
        self._finish_done()
        if self.on_step is not None:
            try:
                self.on_step(stats)
            except Exception:  # noqa: BLE001 - metrics must never stop decoding
                log.exception("on_step observer failed")

    def _fail_step(self, e: Exception) -> None:
        log.exception("engine step failed; failing the requests in it")
        self._failed_steps += 1
        error = StepFailed(f"the engine step running this request failed: {type(e).__name__}: {e}")
        for req in list(self.core.scheduler.running):
            self.core.fail(req)
            stream = self._streams.pop(req.request_id, None)
            if stream is not None:
                stream.put(error)
        self._finish_done()
        if self._failed_steps >= MAX_FAILED_STEPS:
            raise RuntimeError(f"{self._failed_steps} engine steps failed in a row; last: {type(e).__name__}: {e}") from e

    def _finish_done(self) -> None:
        for rid in [rid for rid, s in self._streams.items() if s.request is not None and s.request.finished]:
            stream = self._streams.pop(rid)
            stream.put(self.llm.result(stream.request))

    def _abort(self, request_id: str, notify: bool = True) -> Optional[EngineResult]:
        """Engine thread: end the request if still queued or running; its stream gets the result
        too when `notify` (a server-side abort the client must see)."""
        stream = self._streams.pop(request_id, None)
        req = self.core.abort(request_id)
        if req is None:
            return None
        result = self.llm.result(req)
        if notify and stream is not None:
            stream.put(result)
        return result

    # -- asyncio side: requests ------------------------------------------------

    async def add(self, sub: Submission) -> RequestStream:
        return (await self.add_all([sub]))[0]

    async def add_all(self, subs: Sequence[Submission]) -> list[RequestStream]:
        """Admit requests, all or none, in one engine-thread job: when this returns they are queued,
        their sessions checked out; a refusal (invalid, queue full, session busy or missing) raises
        here, before any response, and the core's validation is the only one."""
        loop = asyncio.get_running_loop()
        streams = [_Stream(loop, asyncio.Queue()) for _ in subs]

        def admit() -> list[str]:
            admitted: list[str] = []
            try:
                for sub, stream in zip(subs, streams):
                    stream.request = self.core.add_request(sub, _relay(stream))
                    self._streams[stream.request.request_id] = stream
                    admitted.append(stream.request.request_id)
            except BaseException:
                for rid in admitted:
                    self._abort(rid, notify=False)
                raise
            return admitted

        fut = self._call(admit)
        try:
            rids = await asyncio.shield(asyncio.wrap_future(fut))
        except asyncio.CancelledError:
            # the caller left while admission was queued: abort the requests as soon as they exist
            def undo(f: concurrent.futures.Future) -> None:
                if not f.cancelled() and f.exception() is None:
                    self._call(lambda: [self._abort(rid, notify=False) for rid in f.result()])

            fut.add_done_callback(undo)
            raise
        return [RequestStream(rid, s.queue, s.request, self._ender(rid)) for rid, s in zip(rids, streams)]

    def _ender(self, request_id: str) -> Callable[[], concurrent.futures.Future]:
        return lambda: self._call(lambda: self._abort(request_id, notify=False))

    def _abort_every(self) -> int:
        """Engine thread: end every queued and running request; their streams get finish 'abort'."""
        rids = list(self._streams)
        for rid in rids:
            self._abort(rid)
        return len(rids)

    async def abort_all(self) -> int:
        """Server shutdown: end every queued and running request; returns how many there were."""
        return await asyncio.wrap_future(self._call(self._abort_every))

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort what is in flight (callers get finish 'abort'), then stop the thread; later calls get EngineDead."""
        if self._thread.is_alive():
            try:
                self._call(self._abort_every).result(timeout)
            except Exception:  # noqa: BLE001 - dead or stuck: stopping is all that is left
                pass
        with self._lock:
            self._stop = True
        self._wake.set()
        self._thread.join(timeout=timeout)

    # -- asyncio side: sessions ------------------------------------------------

    async def _job(self, fn: Callable[[], object]):
        return await asyncio.wrap_future(self._call(fn))

    def _info(self, session_id: str, tenant: str) -> SessionInfo:
        store = self.core.sessions
        s = store.get(session_id, tenant)
        stats = SpecStats()
        stats.add(s.stats)
        return SessionInfo(s.session_id, s.label, len(s.history), s.kv_length, s.kv_bytes, store.idle_seconds(s),
                           s.busy, stats)

    async def create_session(self, eos_ids: Sequence[int] = (), label: str = "", tenant: str = "",
                             session_id: Optional[str] = None, kv_window: Optional[tuple[int, int]] = None) -> SessionInfo:
        """A new session owned by `tenant`, with a server-generated (unguessable) id unless the
        server's cluster layer chose one. `kv_window` (sink, window): its requests' default; (0, 0) full."""
        def job() -> SessionInfo:
            if len(label) > MAX_LABEL_CHARS:
                raise InvalidRequest(f"client_label is {len(label)} characters; at most {MAX_LABEL_CHARS}", "client_label")
            if len(eos_ids) > MAX_EOS_IDS:
                raise InvalidRequest(f"{len(eos_ids)} eos_token_ids; at most {MAX_EOS_IDS}", "eos_token_ids")
            check_token_ids(eos_ids, self.core.vocab_size, "eos_token_ids")
            if kv_window is not None:
                check_kv_window(kv_window, self.core.max_context)
            s = self.core.sessions.create(list(eos_ids), label, session_id, tenant, kv_window)
            return self._info(s.session_id, tenant)

        return await self._job(job)

    async def session_info(self, session_id: str, tenant: str = "") -> SessionInfo:
        return await self._job(lambda: self._info(session_id, tenant))

    async def append_tokens(self, session_id: str, token_ids: Sequence[int], tenant: str = "") -> int:
        """Extend an idle session's history; SessionBusy while a generate on it is admitted or running."""
        def job() -> int:
            history = len(self.core.sessions.get(session_id, tenant).history)  # not found before invalid ids
            check_token_ids(token_ids, self.core.vocab_size, "token_ids")
            if history + len(token_ids) >= self.core.max_context:  # no room left to generate even one token
                raise ContextLengthExceeded(
                    f"the session would hold {history + len(token_ids)} tokens; this model's context is "
                    f"{self.core.max_context} (history and generated tokens together)", "token_ids")
            return self.core.sessions.append(session_id, list(token_ids), tenant)

        return await self._job(job)

    async def close_session(self, session_id: str, tenant: str = "") -> None:
        await self._job(lambda: self.core.sessions.close(session_id, tenant))

    async def session_state(self, session_id: str, tenant: str = "") -> tuple[list[int], tuple[int, ...], str]:
        """(history, eos ids, label): what another replica needs to continue the session."""
        def job():
            s = self.core.sessions.get(session_id, tenant)
            return list(s.history), tuple(s.eos_ids), s.label

        return await self._job(job)

    async def adopt_session(self, session_id: str, history: Sequence[int], eos_ids: Sequence[int] = (),
                            label: str = "", tenant: str = "") -> None:
        """Take over a session another replica held: any stale copy here is dropped, the history is
        restored without KV (the next turn prefills it)."""
        def job() -> None:
            store = self.core.sessions
            try:
                store.idle(session_id, "wait for it to finish or cancel it", tenant=tenant)  # SessionBusy
                store.close(session_id, tenant)
            except SessionNotFound:
                pass
            store.create(list(eos_ids), label, session_id, tenant)
            if history:
                store.append(session_id, list(history), tenant)

        await self._job(job)


def _relay(stream: _Stream) -> Callable[[int], bool]:
    """The request's on_token: engine thread, after the token's logprob was recorded."""
    def on_token(tok: int) -> bool:
        req = stream.request
        stream.put((tok, req.logprobs[len(req.output_ids) - 1] if req.sampling.logprobs is not None else None))
        return False

    return on_token
