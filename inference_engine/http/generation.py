"""One choice of a completion: engine tokens → text deltas, with stop strings applied at the edge."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional, Sequence, Union

from ..engine.async_engine import RequestStream
from ..tokenizer import StopMatcher, StreamingDetokenizer
from ..types import EngineResult, SpecStats, Timings, TokenLogprob


@dataclass(slots=True)
class Delta:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the tokens behind this text


@dataclass(slots=True)
class ChoiceEnd:
    finish_reason: str
    completion_tokens: int
    spec: SpecStats = field(default_factory=SpecStats)
    first_token_at: Optional[float] = None
    token_gaps: list[float] = field(default_factory=list)  # seconds between consecutive tokens
    cached_tokens: int = 0  # prompt tokens whose KV was reused (session or prefix cache)
    token_ids: list[int] = field(default_factory=list)  # generated ids (a stop string may end mid-token)
    prompt_logprobs: Optional[list] = None  # per prompt token (the first: None), when requested
    timings: Optional[Timings] = None  # the engine's queue / prefill / decode times
    stop_sequence: Optional[str] = None  # the stop string that ended it, if one did


Piece = Union[Delta, ChoiceEnd]


async def run_choice(stream: RequestStream, tokenizer, stops: Sequence[str]) -> AsyncIterator[Piece]:
    """Yields Deltas, then one ChoiceEnd. A stop string ends the request early (finish 'stop');
    no part of it is ever yielded. However the consumer leaves, the engine request is aborted."""
    detok, matcher = StreamingDetokenizer(tokenizer), StopMatcher(stops)
    ids, first, last, pending, gaps = [], None, 0.0, [], []
    try:
        async for item in stream:
            if isinstance(item, EngineResult):
                tail = matcher.push(detok.flush()) + matcher.flush()
                if tail or pending:
                    yield Delta(tail, pending)
                yield ChoiceEnd(item.finish_reason.value, len(ids), item.spec, first, gaps, item.usage.cached_tokens, ids,
                                item.prompt_logprobs, item.timings)
                return
            token, logprob = item
            ids.append(token)
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                gaps.append(now - last)
            last = now
            if logprob is not None:
                pending.append(logprob)
            text = matcher.push(detok.push(token))
            if text:
                yield Delta(text, pending)
                pending = []
            if matcher.stopped:
                # the engine's own accounting (drafts, cached prompt tokens) of what it did until the stop
                result = await stream.abort()
                spec, cached = (result.spec, result.usage.cached_tokens) if result else (SpecStats(), 0)
                yield ChoiceEnd("stop", len(ids), spec, first, gaps, cached, ids, result.prompt_logprobs if result else None,
                                result.timings if result else None, matcher.matched)
                return
    finally:
        stream.cancel()  # at once, even if this task is being cancelled
        await stream.abort()


async def merge_choices(streams: list[AsyncIterator[Piece]]) -> AsyncIterator[tuple[int, Piece]]:
    """Interleave n choices as their pieces arrive: (choice index, piece)."""
    if len(streams) == 1:
        async for piece in streams[0]:
            yield 0, piece
        return
    q: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, s: AsyncIterator[Piece]) -> None:
        try:
            async for piece in s:
                await q.put((i, piece))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            await q.put((i, e))
        finally:
            await q.put((i, done))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, piece = await q.get()
            if piece is done:
                remaining -= 1
            elif isinstance(piece, BaseException):
                raise piece
            else:
                yield i, piece
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # each choice has aborted its engine request


async def whole(streams: list[AsyncIterator[Piece]]) -> tuple[str, ChoiceEnd]:
    """One choice's whole text and its end (the APIs without `n`: Responses, Anthropic Messages)."""
    text, end = "", None
    async for _, piece in merge_choices(streams):
        if isinstance(piece, ChoiceEnd):
            end = piece
        else:
            text += piece.text
    return text, end
