"""Sessions and the automatic prefix cache: token histories with their KV caches, LRU by bytes.

A session owns its token history and its KV cache; no two sessions (or requests) ever share
a cache object. While a request runs, the session is checked out (busy) and the cache belongs
to the request; check_in gives both back. Anonymous prefix entries hold the caches of finished
stateless requests, so a later request with the same prefix prefills only what is new.

Invariants (tests/test_session_store.py):
  INV-1 the cache holds exactly history[:cache.length], and after a generate
        cache.length == len(history) - 1: the newest token is the next forward's input;
        rejected drafts and tokens discarded after a stop are trimmed before check-in.
  INV-2 the bytes of the caches held here never exceed max_bytes: check-in evicts least
        recently used caches first (a session evicted by bytes keeps its history and
        re-prefills next time; an evicted prefix entry disappears).

Namespaces: client sessions are keyed by (tenant, id) and prefix entries by (tenant, n) in
separate key spaces, so no client id can name (or replace) a prefix entry, and a session of
one API key does not exist for another (404, as if never created). The tenant is "" when
the server has no keys.
"""
from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ..errors import SessionBusy, SessionNotFound, TooManySessions
from ..types import SpecStats
from .kv_cache import KVCache


@dataclass(eq=False, slots=True)
class Session:
    session_id: str
    eos_ids: tuple[int, ...] = ()
    label: str = ""
    history: list[int] = field(default_factory=list)
    cache: Optional[KVCache] = None
    stats: SpecStats = field(default_factory=SpecStats)
    last_used: float = 0.0
    busy: bool = False
    anonymous: bool = False  # a prefix-cache entry, not a client's session
    tenant: str = ""         # the API key (hashed) that owns it
    kv_window: Optional[tuple[int, int]] = None  # its requests' default (sink, window) (gRPC CreateSession); (0, 0): full
    hint: bool = False  # made for a cache hint (prompt_cache_key): the first to go when sessions are full

    @property
    def kv_length(self) -> int:
        return self.cache.length if self.cache is not None else 0

    @property
    def kv_bytes(self) -> int:
        return self.cache.nbytes if self.cache is not None else 0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class SessionStore:
    def __init__(
        self,
        max_bytes: int = 1 << 30,
        ttl_seconds: float = 3600.0,
        max_sessions: int = 256,
        max_prefix_entries: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_bytes, self.ttl, self.max_sessions = max_bytes, ttl_seconds, max_sessions
        self.max_prefix_entries = max_prefix_entries
        self.clock = clock
        self._lock = threading.RLock()
        # LRU order, oldest first; keys ("s", tenant, id) for sessions, ("p", tenant, n) for prefixes
        self._entries: "OrderedDict[tuple, Session]" = OrderedDict()
        self._anon_ids = itertools.count()

    # -- client sessions -------------------------------------------------------

    def create(self, eos_ids: Sequence[int] = (), label: str = "", session_id: Optional[str] = None,
               tenant: str = "", kv_window: Optional[tuple[int, int]] = None, hint: bool = False) -> Session:
        with self._lock:
            self.expire()
            if self.num_sessions >= self.max_sessions and not self._drop_a_hint():
                raise TooManySessions(f"session capacity reached ({self.max_sessions}); close a session or retry later")
            sid = session_id or f"sess-{uuid.uuid4().hex}"  # 128 random bits: not guessable
            if ("s", tenant, sid) in self._entries:
                raise SessionBusy(f"session {sid!r} already exists", "session_id")
            s = Session(sid, tuple(eos_ids), label, last_used=self.clock(), tenant=tenant, kv_window=kv_window, hint=hint)
            self._entries[("s", tenant, sid)] = s
            return s

    def get(self, session_id: str, tenant: str = "") -> Session:
        with self._lock:
            self.expire()
            s = self._entries.get(("s", tenant, session_id))
            if s is None:
                raise SessionNotFound(f"session {session_id!r} does not exist (closed, expired or never created)", "session_id")
            return s

    def _drop_a_hint(self) -> bool:
        """Forget the least recently used idle hint session (its conversation prefills again)."""
        for key, s in self._entries.items():
            if s.hint and not s.busy:
                del self._entries[key]
                return True
        return False

    def get_or_create(self, session_id: str, tenant: str = "", hint: bool = False) -> Session:
        """HTTP sessions are named by the client: the first request with a new id creates it."""
        with self._lock:
            try:
                return self.get(session_id, tenant)
            except SessionNotFound:
                return self.create(session_id=session_id, tenant=tenant, hint=hint)

    def idle(self, session_id: str, then: str, create: bool = False, tenant: str = "", hint: bool = False) -> Session:
        """The session, refused with SessionBusy while a generate runs on it; `then` says what the client may do."""
        with self._lock:
            s = self.get_or_create(session_id, tenant, hint) if create else self.get(session_id, tenant)
            if s.busy:
                raise SessionBusy(f"session {session_id!r} already has a generate in progress; {then}", "session_id")
            return s

    def idle_seconds(self, s: Session) -> float:
        return self.clock() - s.last_used

    def append(self, session_id: str, token_ids: Sequence[int], tenant: str = "") -> int:
        with self._lock:
            s = self.idle(session_id, "append after it finishes", tenant=tenant)
            s.history.extend(token_ids)
            s.last_used = self.clock()
            return len(s.history)

    def check_out(self, session_id: str, tenant: str = "", create: bool = False, hint: bool = False) -> Session:
        with self._lock:
            s = self.idle(session_id, "wait for it to finish or cancel it", create, tenant, hint)
            s.busy = True
            return s

    def check_in(self, s: Session, history: Sequence[int], cache: Optional[KVCache], stats: Optional[SpecStats] = None) -> None:
        """Give a session back after a request: its new history, its cache trimmed to that history (INV-1)."""
        with self._lock:
            s.history = list(history)
            s.cache = _fit(cache, s.history)
            s.busy = False
            s.last_used = self.clock()
            if stats is not None:
                s.stats.add(stats)
            key = ("s", s.tenant, s.session_id)
            if self._entries.get(key) is s:
                self._entries.move_to_end(key)
                self._enforce_budget()

    def close(self, session_id: str, tenant: str = "") -> None:
        with self._lock:
            self.idle(session_id, "cancel it first", tenant=tenant)
            del self._entries[("s", tenant, session_id)]

    # -- automatic prefix cache --------------------------------------------------

    def take_prefix(self, tokens: Sequence[int], tenant: str = "") -> tuple[Optional[KVCache], int]:
        """A cache for the longest prefix an entry of this tenant shares with `tokens`, and that length.
        When the whole entry is a prefix of `tokens` (the next turn of a conversation) the entry is
        moved out; when they diverge part-way, the shared part is copied and the entry stays for others."""
        with self._lock:
            best, best_key, best_len = None, None, 0
            for key, s in self._entries.items():
                if s.anonymous and s.tenant == tenant:
                    n = common_prefix(s.history, tokens)
                    if n > best_len:
                        best, best_key, best_len = s, key, n
            if best is None:
                return None, 0
            if best_len < best.kv_length:
                self._entries.move_to_end(best_key)
                return best.cache.clone_prefix(best_len), best_len
            del self._entries[best_key]
            return best.cache, best_len

    def put_prefix(self, tokens: Sequence[int], cache: Optional[KVCache], tenant: str = "") -> None:
        cache = _fit(cache, tokens)
        if cache is None or cache.length == 0 or cache.window is not None:  # windowed: no prefix to share
            return
        with self._lock:
            n = next(self._anon_ids)
            self._entries[("p", tenant, n)] = Session(f"prefix-{n}", history=list(tokens[: cache.length]), cache=cache,
                                                      last_used=self.clock(), anonymous=True, tenant=tenant)
            anon = [k for k, e in self._entries.items() if e.anonymous]
            for k in anon[: max(0, len(anon) - self.max_prefix_entries)]:
                del self._entries[k]
            self._enforce_budget()

    # -- bounds ------------------------------------------------------------------

    @property
    def num_sessions(self) -> int:
        with self._lock:
            return sum(not s.anonymous for s in self._entries.values())

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(s.kv_bytes for s in self._entries.values() if not s.busy)

    @property
    def cached_tokens(self) -> int:
        """Positions whose KV is held (what total_bytes pays for, spare capacity aside)."""
        with self._lock:
            return sum(s.kv_length for s in self._entries.values() if not s.busy and s.cache is not None)

    def expire(self) -> list[str]:
        """Remove sessions idle longer than the TTL (never a busy one)."""
        with self._lock:
            now = self.clock()
            old = [k for k, s in self._entries.items() if not s.busy and now - s.last_used > self.ttl]
            for k in old:
                del self._entries[k]
            return old

    def _enforce_budget(self) -> None:
        """INV-2: drop least recently used caches until the held bytes fit the budget."""
        total = self.total_bytes
        for k, s in list(self._entries.items()):
            if total <= self.max_bytes:
                return
            if s.busy or s.cache is None:
                continue
            total -= s.kv_bytes
            if s.anonymous:
                del self._entries[k]
            else:
                s.cache = None  # the session survives; its next turn prefills again


def _fit(cache: Optional[KVCache], history: Sequence[int]) -> Optional[KVCache]:
    """Trim a cache to at most len(history) - 1 positions: the newest token is the next input."""
    if cache is None:
        return None
    cache.trim(cache.length - max(0, len(history) - 1))
    return cache
