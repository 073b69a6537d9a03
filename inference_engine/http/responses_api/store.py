"""Stored responses (`store`, default true as OpenAI's): each keeps its whole conversation as items,
so `previous_response_id` can rebuild the prompt even when the KV is gone; the KV itself lives in
the engine's session store under the conversation's cache key (byte budget, TTL, LRU as there).
Bounded by count, oldest first; a response is visible only to the API key that stored it."""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

from ...errors import EngineError


class ResponseNotFound(EngineError):
    http_status, openai_type, code, grpc_code = 404, "invalid_request_error", "response_not_found", "NOT_FOUND"


@dataclass(slots=True)
class Stored:
    tenant: str
    response: dict  # the response object as returned
    input_items: list[dict]  # this request's input items, with ids
    conversation: list[dict]  # every item of the conversation so far, outputs included
    cache_key: str  # the conversation's: its KV session
    stored_at: float = field(default_factory=time.time)


class ResponseStore:
    def __init__(self, max_responses: int = 1024):
        self.max_responses = max_responses
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def put(self, response_id: str, stored: Stored) -> None:
        self._items[response_id] = stored
        self._items.move_to_end(response_id)
        while len(self._items) > self.max_responses:
            self._items.popitem(last=False)

    def get(self, response_id: str, tenant: str, param: Optional[str] = None) -> Stored:
        s = self._items.get(response_id)
        if s is None or s.tenant != tenant:  # another key's response does not exist for this one
            raise ResponseNotFound(f"response {response_id!r} not found (not stored, deleted, or evicted)", param)
        self._items.move_to_end(response_id)
        return s

    def delete(self, response_id: str, tenant: str) -> None:
        self.get(response_id, tenant)
        del self._items[response_id]

    def __len__(self) -> int:
        return len(self._items)
