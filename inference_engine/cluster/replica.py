"""One engine replica: today's AsyncEngine inside a Ray Serve deployment replica.

`generate` relays a request's tokens to the ingress, one message per batch of tokens the engine
produced (a speculative step yields several), each with the request's speculation counts so far,
so the ingress can end a request early (a stop string) and still report what it cost. Sessions
go through the directory: acquired before the turn (a session new to this replica is restored
from its recorded history and prefilled again), released with the new history after.
"""
from __future__ import annotations

import asyncio
import logging

import ray
from ray import serve

from ..config import EngineConfig, ModelConfig
from ..engine.async_engine import AsyncEngine
from ..engine.request_stream import SessionInfo
from ..errors import SessionNotFound
from ..metrics import engine_metrics
from ..types import EngineResult, Submission
from .directory import Claim
from .remote import unwrap

log = logging.getLogger(__name__)
HEARTBEAT_S = 1.0


class EngineReplica:
    def __init__(self, model: ModelConfig, engine: EngineConfig, directory: str, namespace: str, threads: int = 1):
        import torch

        from ..engine.llm import LLM
        from ..models import load_model

        torch.set_num_threads(threads)  # replicas share the machine: one pool each, no oversubscription
        self.engine = AsyncEngine(LLM(load_model(model), engine))
        self.id = serve.get_replica_context().replica_id.unique_id
        self.directory = ray.get_actor(directory, namespace=namespace)
        self.metrics = engine_metrics(self.engine)  # the same families as `kakeya serve`'s
        self.engine.on_step = self.metrics.observe_step
        self._beat = asyncio.get_event_loop().create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        while True:
            try:
                health = {"alive": self.engine.alive, "running": self.engine.num_running,
                          "waiting": self.engine.num_waiting, "sessions": self.engine.num_sessions,
                          "cache_bytes": self.engine.cache_bytes, **await self.engine.health()}
                await self.directory.heartbeat.remote(self.id, health, self.metrics.render())
            except Exception:  # noqa: BLE001 - a missed beat is retried; the lease covers a few
                log.exception("heartbeat to the session directory failed")
            await asyncio.sleep(HEARTBEAT_S)

    def check_health(self) -> None:
        """Serve's health check: a replica whose engine thread died is replaced."""
        if not self.engine.alive:
            raise RuntimeError(self.engine.dead_error().message)

    async def describe(self) -> dict:
        """What the ingress needs to validate and render requests without a model of its own."""
        return {"info": self.engine.info, "limits": self.engine.limits, "tokenizer": self.engine.tokenizer}

    async def generate(self, sub: Submission):
        """Yields ("admitted", replica id), then (items, spec stats, cached tokens) batches; the last
        item of the last batch is the EngineResult. Refusals raise before the first message."""
        session_id, tenant = sub.session_id, sub.tenant
        claim = await self._acquire(session_id, tenant, sub.create_session) if session_id else None
        stream = None
        try:
            if sub.sampling.grammar is not None:
                await self.engine.prepare_grammar(sub.sampling.grammar)
            stream = await self.engine.add(sub)
            yield ("admitted", self.id)
            async for item in stream:
                items = [item] + ([] if isinstance(item, EngineResult) else stream.pending())
                spec_so_far, cached = stream.progress()
                if isinstance(items[-1], EngineResult):
                    if claim is not None:  # released before the client hears of it: its next turn is free
                        claim = await self._release(session_id, tenant, claim)
                    yield (items, spec_so_far, cached)
                    return
                yield (items, spec_so_far, cached)
        finally:
            if stream is not None:
                await asyncio.shield(stream.abort())  # the ingress left (or a stop string): end it here too
            if claim is not None:
                await asyncio.shield(self._release(session_id, tenant, claim))

    async def _acquire(self, sid: str, tenant: str, create: bool) -> Claim:
        claim = await unwrap(self.directory.acquire.remote(tenant, sid, self.id, create))
        if claim.outcome == "handoff":  # another replica had it: continue from the recorded history
            try:
                await self.engine.adopt_session(sid, claim.history, claim.eos_ids, claim.label, tenant)
            except BaseException:
                await self.directory.release.remote(tenant, sid, self.id, claim.epoch)
                raise
        return claim

    async def _release(self, sid: str, tenant: str, claim: Claim) -> None:
        """Record the session's history in the directory and free it; returns None (the claim is spent)."""
        try:
            history, eos_ids, label = await self.engine.session_state(sid, tenant)
        except SessionNotFound:  # refused before it was created, or closed meanwhile
            history, eos_ids, label = None, (), ""
        await self.directory.release.remote(tenant, sid, self.id, claim.epoch, history, eos_ids, label)

    async def create_session(self, session_id: str, eos_ids: list[int], label: str, tenant: str) -> SessionInfo:
        claim = await self._acquire(session_id, tenant, True)
        try:
            return await self.engine.create_session(eos_ids, label, tenant, session_id=session_id)
        finally:
            await self._release(session_id, tenant, claim)

    async def session_info(self, session_id: str, tenant: str) -> SessionInfo:
        try:
            return await self.engine.session_info(session_id, tenant)
        except SessionNotFound:  # held by another replica (or nowhere): what the directory knows
            seen = await self.directory.lookup.remote(tenant, session_id)
            if seen is None:
                raise
            return SessionInfo(session_id, "", seen["history_length"], 0, 0, seen["idle_seconds"], seen["busy"])

    async def close_session(self, session_id: str, tenant: str) -> None:
        known = await self.directory.forget.remote(tenant, session_id)
        try:
            await self.engine.close_session(session_id, tenant)
        except SessionNotFound:
            if not known:
                raise

    async def __del__(self):
        """Graceful scale-down (Serve has let in-flight requests finish): hand the sessions over."""
        self._beat.cancel()
        try:
            await self.directory.leave.remote(self.id)
        finally:
            self.engine.shutdown()
