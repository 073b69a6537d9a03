"""The session directory: which replica owns each session, and its token history (never its KV).

One instance lives in a named, detached Ray actor (docs/decisions/0007-session-directory.md). A
replica *acquires* a session before a turn and *releases* it with the new history after; the
entry's owner and epoch change when another replica acquires it (a handoff), so exactly one
replica owns a session at a time, and a session busy on a live replica is busy everywhere (409).
Replicas heartbeat with their health and metrics; one silent for `lease_s` counts as dead, and
the sessions it held busy become free. Plain Python: the actor wraps it, tests drive it directly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..errors import SessionBusy

OUTCOMES = ("new", "owner", "handoff")  # what acquiring a session turned out to be (routing figures)


@dataclass(slots=True)
class Entry:
    owner: str
    epoch: int = 1
    busy: bool = False
    history: list[int] = field(default_factory=list)
    eos_ids: tuple[int, ...] = ()
    label: str = ""
    last_used: float = 0.0


@dataclass(frozen=True, slots=True)
class Claim:
    """What a replica learns when it acquires a session: `moved` means it did not own it before
    (restore `history` and prefill again); `epoch` must come back with the release."""

    epoch: int
    outcome: str
    history: tuple[int, ...] = ()
    eos_ids: tuple[int, ...] = ()
    label: str = ""


@dataclass(slots=True)
class Beat:
    at: float
    health: dict
    metrics: bytes


class SessionDirectory:
    def __init__(self, lease_s: float = 5.0, ttl_s: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        self.lease_s, self.ttl_s, self.clock = lease_s, ttl_s, clock
        self.entries: dict[tuple[str, str], Entry] = {}
        self.beats: dict[str, Beat] = {}
        self.turns = dict.fromkeys(OUTCOMES, 0)

    def alive(self, replica: str) -> bool:
        beat = self.beats.get(replica)
        return beat is not None and self.clock() - beat.at < self.lease_s

    def heartbeat(self, replica: str, health: dict, metrics: bytes = b"") -> None:
        self.beats[replica] = Beat(self.clock(), health, metrics)
        self._expire()

    def leave(self, replica: str) -> int:
        """A replica going away gracefully: its sessions are free for the next replica to take (their
        history is already here); returns how many it held."""
        self.beats.pop(replica, None)
        held = [e for e in self.entries.values() if e.owner == replica]
        for e in held:
            e.busy, e.owner = False, ""
        return len(held)

    def acquire(self, tenant: str, sid: str, replica: str, create: bool = True) -> Claim:
        e = self.entries.get((tenant, sid))
        if e is None:
            if not create:
                return Claim(0, "new")
            self.entries[(tenant, sid)] = Entry(replica, busy=True, last_used=self.clock())
            self.turns["new"] += 1
            return Claim(1, "new")
        if e.busy and (e.owner == replica or self.alive(e.owner)):
            raise SessionBusy(f"session {sid!r} is generating; wait for it to finish or cancel it", "session_id")
        outcome = "owner" if e.owner == replica else "handoff"
        if outcome == "handoff":
            e.owner, e.epoch = replica, e.epoch + 1
        e.busy, e.last_used = True, self.clock()
        self.turns[outcome] += 1
        return Claim(e.epoch, outcome, tuple(e.history), e.eos_ids, e.label)

    def release(self, tenant: str, sid: str, replica: str, epoch: int, history: Optional[list[int]] = None,
                eos_ids: tuple[int, ...] = (), label: str = "") -> bool:
        """End a turn: record the history it left. False (nothing recorded) if another replica took
        the session over meanwhile (this replica was presumed dead): its copy is stale."""
        e = self.entries.get((tenant, sid))
        if e is None or e.owner != replica or e.epoch != epoch:
            return False
        if history is not None:
            e.history, e.eos_ids, e.label = list(history), tuple(eos_ids), label
        e.busy, e.last_used = False, self.clock()
        return True

    def forget(self, tenant: str, sid: str) -> bool:
        return self.entries.pop((tenant, sid), None) is not None

    def lookup(self, tenant: str, sid: str) -> Optional[dict]:
        e = self.entries.get((tenant, sid))
        if e is None:
            return None
        return {"owner": e.owner, "epoch": e.epoch, "busy": e.busy and self.alive(e.owner),
                "history_length": len(e.history), "idle_seconds": self.clock() - e.last_used}

    def snapshot(self) -> dict:
        """Live replicas (health and metrics text) and the routing figures, for the ingress."""
        live = {r: b for r, b in self.beats.items() if self.alive(r)}
        return {"replicas": {r: {"health": b.health, "metrics": b.metrics} for r, b in sorted(live.items())},
                "turns": dict(self.turns), "sessions": len(self.entries)}

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, e in self.entries.items() if not e.busy and now - e.last_used > self.ttl_s]:
            del self.entries[key]
        for r in [r for r, b in self.beats.items() if now - b.at > 10 * self.lease_s]:
            del self.beats[r]
