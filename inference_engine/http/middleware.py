"""Pure ASGI middleware (no BaseHTTPMiddleware: it wraps `receive` and would hide disconnects
from the routes, and buffers streaming responses)."""
from __future__ import annotations

import time
from typing import Callable, Optional

from ..errors import PayloadTooLarge
from ..metrics import Metrics
from . import errors

COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")
COUNTED = "kakeya_counted"  # scope state flag: the route recorded this request itself


class CountRefusals:
    """Counts completion requests answered with an error status before any generation (validation,
    auth, model, admission, loading): `kakeya_requests_total{finish_reason="error"}`."""

    def __init__(self, app, metrics: Callable[[], Optional[Metrics]]):
        self.app, self.metrics = app, metrics  # None until the model is loaded

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in COMPLETION_PATHS:
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()

        async def counting_send(message):
            if message["type"] == "http.response.start" and message["status"] >= 400 \
                    and not scope.get("state", {}).get(COUNTED) and self.metrics() is not None:
                self.metrics().observe_request(scope["path"], message["status"], "error", 0, 0, None,
                                              time.perf_counter() - t0)
            await send(message)

        await self.app(scope, receive, counting_send)


class BodyLimit:
    """Refuses an oversized body by its Content-Length before reading it (pure ASGI, so streaming
    responses and disconnect detection pass through untouched)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope.get("headers") or ()).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                e = PayloadTooLarge(f"request body is {int(length)} bytes; the limit is {self.limit}")
                return await errors.engine_error_response(e)(scope, receive, send)
        await self.app(scope, receive, send)
