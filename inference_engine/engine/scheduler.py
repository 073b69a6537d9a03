"""Admission and interleaving: FIFO waiting queue, a bounded running set.

Every running request advances by one verify step per engine step, so long generations
cannot starve short ones; the verifier batches the decoding ones into one forward.
"""
from __future__ import annotations

import time
from collections import deque

from ..errors import Overloaded
from .request import Request


class Scheduler:
    def __init__(self, max_running: int = 8, max_waiting: int = 64):
        self.max_running, self.max_waiting = max_running, max_waiting
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def check_capacity(self) -> None:
        """Room for max_running + max_waiting admitted requests: a burst into an idle engine fills the
        running slots first (they move there at the next schedule), then the queue."""
        if len(self.running) + len(self.waiting) >= self.max_running + self.max_waiting:
            raise Overloaded(f"queue is full ({self.max_running} running, {self.max_waiting} waiting); retry later")

    def add(self, req: Request) -> None:
        self.check_capacity()
        self.waiting.append(req)

    def schedule(self) -> list[Request]:
        """Admit waiting requests into free running slots; return the batch for this step."""
        while self.waiting and len(self.running) < self.max_running:
            req = self.waiting.popleft()
            req.scheduled_at = time.monotonic()
            self.running.append(req)
        return list(self.running)

    def remove(self, req: Request) -> None:
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)

    def find(self, request_id: str) -> Request | None:
        return next((r for r in (*self.running, *self.waiting) if r.request_id == request_id), None)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)
