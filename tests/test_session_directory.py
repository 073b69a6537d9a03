"""The cluster's session directory (cluster/directory.py), driven directly with a controlled clock:
one owner per session, handoff with its history, busy across replicas, dead owners, scale-down."""
from __future__ import annotations

import pytest

from inference_engine.cluster.directory import SessionDirectory
from inference_engine.errors import SessionBusy


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture()
def d():
    d = SessionDirectory(lease_s=5.0, ttl_s=100.0, clock=Clock())
    d.heartbeat("A", {"alive": True})
    d.heartbeat("B", {"alive": True})
    return d


def test_first_turn_creates_then_the_owner_keeps_it(d):
    first = d.acquire("", "s", "A")
    assert (first.epoch, first.outcome) == (1, "new")
    assert d.release("", "s", "A", first.epoch, [1, 2, 3], (7,), "lbl")
    again = d.acquire("", "s", "A")
    assert (again.epoch, again.outcome, again.history) == (1, "owner", (1, 2, 3))
    assert d.turns == {"new": 1, "owner": 1, "handoff": 0}


def test_handoff_moves_ownership_and_brings_the_history(d):
    c = d.acquire("", "s", "A")
    d.release("", "s", "A", c.epoch, [5, 6], (9,), "chat")
    moved = d.acquire("", "s", "B")
    assert (moved.outcome, moved.epoch, moved.history, moved.eos_ids, moved.label) == ("handoff", 2, (5, 6), (9,), "chat")
    assert not d.release("", "s", "A", c.epoch, [0])  # A's epoch is stale: its copy is not recorded
    assert d.release("", "s", "B", moved.epoch, [5, 6, 7])
    assert d.lookup("", "s")["owner"] == "B" and d.lookup("", "s")["history_length"] == 3


def test_busy_on_a_live_replica_is_busy_everywhere(d):
    d.acquire("", "s", "A")
    for replica in ("A", "B"):
        with pytest.raises(SessionBusy):
            d.acquire("", "s", replica)
    d.clock.t = 6.0  # A missed its heartbeats: presumed dead, the session is free for B
    d.heartbeat("B", {})
    assert d.acquire("", "s", "B").outcome == "handoff"


def test_tenants_do_not_share_sessions(d):
    d.acquire("k1", "s", "A")
    assert d.acquire("k2", "s", "B").outcome == "new"


def test_leave_frees_the_sessions_of_a_replica_going_away(d):
    c = d.acquire("", "s", "A")
    d.release("", "s", "A", c.epoch, [1])
    assert d.leave("A") == 1 and "A" not in d.snapshot()["replicas"]
    assert d.acquire("", "s", "B").outcome == "handoff"


def test_refused_turn_leaves_nothing_busy(d):
    c = d.acquire("", "s", "A")
    assert d.release("", "s", "A", c.epoch, None)  # refused before it ran: history unchanged
    assert d.acquire("", "s", "A").outcome == "owner"


def test_idle_sessions_expire_and_forget_drops_them(d):
    c = d.acquire("", "old", "A")
    d.release("", "old", "A", c.epoch, [1])
    d.acquire("", "x", "A")
    d.clock.t = 101.0
    d.heartbeat("A", {})
    assert d.lookup("", "old") is None and d.lookup("", "x") is not None  # busy ones stay
    assert d.forget("", "x") and not d.forget("", "x")


def test_snapshot_lists_live_replicas_only(d):
    d.clock.t = 4.0
    d.heartbeat("A", {"alive": True}, b"m")
    d.clock.t = 6.0
    snap = d.snapshot()
    assert list(snap["replicas"]) == ["A"] and snap["replicas"]["A"]["metrics"] == b"m"
