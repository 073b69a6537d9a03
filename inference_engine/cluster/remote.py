"""The ingress's engine: engine/protocol.py's Engine, answered by replicas.

Routing keys (Ray Serve's `session_id` handle option, which the ConsistentHashRouter hashes): a
session's id, so its turns land on the replica holding its KV; for a stateless request, a hash of
its first PREFIX_TOKENS prompt tokens, so prompts sharing a system prompt meet the same prefix
cache. A replica that died before admitting the request is retried once on another.
"""
from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import replace
from typing import Optional, Sequence

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from ..engine.request_stream import SessionInfo
from ..errors import EngineDead, EngineError
from ..types import EngineResult, FinishReason, SpecStats, Submission, Usage

PREFIX_TOKENS = 64
RELEASE_WAIT_S = 5.0  # at most, for a replica to release a session after an abort (then the lease decides)
ATTEMPTS = 4  # admissions tried when a replica died before admitting (nothing ran there)
SNAPSHOT_S = 1.0  # how often the ingress refreshes the replicas' health and metrics from the directory
_GONE = (ActorDiedError, ActorUnavailableError)


async def unwrap(awaitable):
    """Await a Ray call; a typed EngineError raised remotely is raised here as itself."""
    try:
        return await awaitable
    except RayTaskError as e:
        if isinstance(e.cause, EngineError):
            raise e.cause from None
        raise


def prefix_key(prompt: Sequence[int]) -> str:
    return "prefix-" + hashlib.blake2b(repr(list(prompt[:PREFIX_TOKENS])).encode(), digest_size=8).hexdigest()


class RemoteStream:
    """RequestStream's interface over a replica's relay: (token, logprob) pairs, then the result."""

    def __init__(self, response, replica: str, prompt_len: int, tokenizer, session: Optional[tuple] = None):
        self.response, self.replica, self.prompt_len, self.tokenizer = response, replica, prompt_len, tokenizer
        self.session = session  # (directory, tenant, session id) of a session turn
        self.result: Optional[EngineResult] = None
        self.request_id = f"{replica}/{id(self)}"
        self._tokens: list[tuple[int, object]] = []
        self._spec, self._cached = SpecStats(), 0

    def __aiter__(self):
        return self._items()

    async def _items(self):
        while self.result is None:
            try:
                items, self._spec, self._cached = await unwrap(self.response.__anext__())
            except StopAsyncIteration:
                raise EngineDead(f"replica {self.replica} ended the request without a result") from None
            except _GONE as e:
                raise EngineDead(f"replica {self.replica} went away mid-request ({type(e).__name__}); retry") from None
            for item in items:
                if isinstance(item, EngineResult):
                    self.result = item
                else:
                    self._tokens.append(item)
                yield item

    def cancel(self) -> None:
        if self.result is None:
            self.response.cancel()  # the replica's relay ends and aborts the engine request

    async def abort(self) -> Optional[EngineResult]:
        """Ended early by the ingress: what was relayed so far, accounted as the replica reported it.
        A session turn returns once the replica has released the session (as AsyncEngine's abort
        returns once the session is checked in), so the client's next turn is not refused as busy."""
        self.cancel()
        if self.result is None and self.session is not None:
            directory, tenant, sid = self.session
            for _ in range(int(RELEASE_WAIT_S / 0.02)):
                seen = await directory.lookup.remote(tenant, sid)
                if seen is None or not seen["busy"]:
                    break
                await asyncio.sleep(0.02)
        if self.result is None:
            ids = [t for t, _ in self._tokens]
            logprobs = [lp for _, lp in self._tokens] if self._tokens and self._tokens[0][1] is not None else None
            self.result = EngineResult(ids, self.tokenizer.decode(ids), FinishReason.ABORT,
                                       Usage(self.prompt_len, len(ids), self._cached), self._spec, logprobs)
        return self.result


class RemoteEngine:
    def __init__(self, handle, directory, described: dict):
        self.handle, self.directory = handle, directory
        self.info, self.limits, self.tokenizer = described["info"], described["limits"], described["tokenizer"]
        self.on_step = None  # steps run on the replicas; their metrics come with their heartbeats
        self.snapshot: dict = {"replicas": {}, "turns": {}, "sessions": 0}
        self._refresh: Optional[asyncio.Task] = None

    async def start(self) -> None:
        self.snapshot = await self.directory.snapshot.remote()
        self._refresh = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_S)
            try:
                self.snapshot = await self.directory.snapshot.remote()
            except Exception:  # noqa: BLE001 - keep the last snapshot; /healthz goes stale, not down
                pass

    def _sum(self, field: str) -> int:
        return sum(r["health"].get(field, 0) for r in self.snapshot["replicas"].values())

    num_running = property(lambda self: self._sum("running"))
    num_waiting = property(lambda self: self._sum("waiting"))
    num_sessions = property(lambda self: self._sum("sessions"))
    cache_bytes = property(lambda self: self._sum("cache_bytes"))

    @property
    def alive(self) -> bool:
        return any(r["health"].get("alive") for r in self.snapshot["replicas"].values())

    def dead_error(self) -> EngineDead:
        return EngineDead("no engine replica is alive; retry shortly")

    async def health(self) -> dict:
        replicas = self.snapshot["replicas"]
        return {"decode_path": sorted({r["health"].get("decode_path") for r in replicas.values()}),
                "replicas": [{"id": rid, **r["health"]} for rid, r in replicas.items()]}

    async def prepare_grammar(self, grammar: str) -> None:
        """Grammars compile on the replica that runs the request (off its engine thread)."""

    async def add_all(self, subs: Sequence[Submission]) -> list[RemoteStream]:
        """All or none: a refusal cancels the choices already admitted (on their replicas)."""
        streams: list[RemoteStream] = []
        try:
            for sub in subs:
                streams.append(await self.add(sub))
        except BaseException:
            for s in streams:
                s.cancel()
            raise
        return streams

    async def add(self, sub: Submission) -> RemoteStream:
        key = sub.session_id or prefix_key(sub.prompt_ids or [])
        if sub.prompt_ids is not None:
            sub = replace(sub, prompt_ids=list(sub.prompt_ids))
        for attempt in range(ATTEMPTS):
            response = self.handle.options(stream=True, session_id=key).generate.remote(sub)
            try:
                _, replica = await unwrap(response.__anext__())
                return RemoteStream(response, replica, len(sub.prompt_ids or ()), self.tokenizer,
                                    (self.directory, sub.tenant, sub.session_id) if sub.session_id else None)
            except _GONE:
                if attempt == ATTEMPTS - 1:
                    raise EngineDead("the engine replicas went away; retry shortly") from None
                await asyncio.sleep(SNAPSHOT_S * (attempt + 1))  # until the router learns the replica is gone
            except BaseException:
                response.cancel()
                raise

    def _call(self, session_id: str, method: str, *args):
        return unwrap(getattr(self.handle.options(session_id=session_id), method).remote(*args))

    async def create_session(self, eos_ids: Sequence[int] = (), label: str = "", tenant: str = "") -> SessionInfo:
        sid = f"sess-{secrets.token_hex(16)}"  # chosen here, so the session is created where it will be routed
        return await self._call(sid, "create_session", sid, list(eos_ids), label, tenant)

    async def session_info(self, session_id: str, tenant: str = "") -> SessionInfo:
        return await self._call(session_id, "session_info", session_id, tenant)

    async def close_session(self, session_id: str, tenant: str = "") -> None:
        await self._call(session_id, "close_session", session_id, tenant)

    async def abort_all(self) -> int:
        return 0  # the ingress holds no engine work of its own; replicas drain on their own shutdown

    def shutdown(self, timeout: float = 10.0) -> None:
        if self._refresh is not None:
            self._refresh.cancel()


def directory_actor(name: str, namespace: str, ttl_s: float):
    """The named, detached directory actor (created if missing)."""
    from .directory import SessionDirectory

    return ray.remote(SessionDirectory).options(name=name, namespace=namespace, lifetime="detached",
                                                get_if_exists=True, num_cpus=0).remote(ttl_s=ttl_s)
