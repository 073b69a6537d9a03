"""Pure ASGI middleware (no BaseHTTPMiddleware: it wraps `receive` and would hide disconnects
from the routes, and buffers streaming responses)."""
from __future__ import annotations

import time
import uuid
from typing import Callable, Optional

from starlette.exceptions import HTTPException

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
    """Refuses an oversized body: by its Content-Length before reading it, and, for a body sent
    without one (chunked), as soon as the bytes read pass the limit: `receive` raises a 413
    HTTPException, which FastAPI's body parsing lets through to the error handlers. Pure ASGI,
    so streaming responses and disconnect detection pass through untouched."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            e = PayloadTooLarge(f"request body is {int(length)} bytes; the limit is {self.limit}")
            return await errors.engine_error_response(e, scope.get("path", ""))(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, f"request body passed the limit of {self.limit} bytes")
            return message

        await self.app(scope, counting_receive, send)


class RequestId:
    """Every response carries `x-request-id`: the client's own (when it is a sane token) or a new one."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or ()).get(b"x-request-id", b"")
        rid = given if given and len(given) <= 128 and given.isascii() and given.replace(b"-", b"").isalnum() \
            else f"req-{uuid.uuid4().hex}".encode()

        async def with_id(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid)]}
            await send(message)

        await self.app(scope, receive, with_id)
