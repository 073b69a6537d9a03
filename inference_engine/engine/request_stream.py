"""What AsyncEngine hands the edges: a RequestStream per admitted request, SessionInfo snapshots."""
from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Optional, Union

from ..types import EngineResult, SpecStats
from .protocol import Token
from .request import Request

Item = Union[Token, EngineResult, BaseException]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A snapshot of a session, taken on the engine thread."""

    session_id: str
    label: str
    history_length: int
    kv_cached_tokens: int
    kv_bytes: int
    idle_seconds: float
    busy: bool
    stats: SpecStats = field(default_factory=SpecStats)


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: "asyncio.Queue[Item]"
    request: Optional[Request] = None

    def put(self, item: Item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the caller's event loop is closed: nobody is listening any more
            pass


class RequestStream:
    """One admitted request. Iterate it for (token, logprob) pairs, then its EngineResult.
    `cancel()` (sync) or `abort()` ends it early; both are idempotent and safe after it finished."""

    def __init__(self, request_id: str, q: "asyncio.Queue[Item]", request: Optional[Request],
                 end: Callable[[], concurrent.futures.Future]):
        """`end` queues the request's abort on the engine thread; its future resolves to the result."""
        self.request_id, self._queue, self._request, self._end = request_id, q, request, end
        self.result: Optional[EngineResult] = None
        self._ended = False
        self._abort: Optional[concurrent.futures.Future] = None

    def __aiter__(self) -> AsyncIterator[Union[Token, EngineResult]]:
        return self._items()

    async def _items(self) -> AsyncIterator[Union[Token, EngineResult]]:
        while not self._ended:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            if isinstance(item, EngineResult):
                self._ended, self.result = True, item
            yield item

    def pending(self) -> list[Item]:
        """Items already queued (for a relay that forwards them in one message)."""
        items: list[Item] = []
        while not self._ended and not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            if isinstance(item, EngineResult):
                self._ended, self.result = True, item
            items.append(item)
        return items

    def progress(self) -> tuple[SpecStats, int]:
        """The request's speculation counts so far and its cached prompt tokens (a copy, read off
        the engine thread: counts may lag by one step)."""
        stats = SpecStats()
        if self._request is not None:
            stats.add(self._request.stats)
            return stats, self._request.cached_tokens
        return stats, 0

    def cancel(self) -> None:
        """Queue the abort now, without waiting: the engine frees the request before its next step."""
        if not self._ended and self._abort is None:
            self._abort = self._end()

    async def abort(self) -> Optional[EngineResult]:
        """End the request and wait until the engine has released it (its session is checked in);
        returns its result (finish 'abort', or how it finished if it got there first)."""
        self.cancel()
        if self._abort is not None:
            try:
                result = await asyncio.shield(asyncio.wrap_future(self._abort))
            except BaseException:  # noqa: BLE001 - cancelled again or the engine is dead: nothing to wait for
                result = None
            self._ended, self._abort = True, None
            # it finished before the abort ran: its result is already queued
            while result is None and not self._queue.empty():
                item = self._queue.get_nowait()
                result = item if isinstance(item, EngineResult) else None
            self.result = self.result or result
        return self.result
