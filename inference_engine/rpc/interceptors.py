"""The one place gRPC statuses come from: bearer-key auth and the EngineError → status mapping."""
from __future__ import annotations

from contextvars import ContextVar
from typing import Sequence

import grpc

from ..auth import check_bearer
from ..errors import EngineError

PUBLIC = ("/grpc.health.v1.Health/", "/grpc.reflection.")  # like /healthz over HTTP: no key needed
TENANT: ContextVar[str] = ContextVar("kakeya_tenant", default="")  # the caller's tenant, set per call by guard()


def _status(e: EngineError) -> grpc.StatusCode:
    return grpc.StatusCode[e.grpc_code]


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every RuntimeService handler: checks the key, then turns EngineErrors into statuses."""

    def __init__(self, api_keys: Sequence[str] = ()):
        self.api_keys = tuple(api_keys)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(PUBLIC):
            return handler
        keys, metadata = self.api_keys, details.invocation_metadata

        def guard():
            tenant = ""
            if keys:
                tenant = check_bearer(dict(metadata or ()).get("authorization", ""), keys,
                                      "metadata `authorization: Bearer <key>`")
            TENANT.set(tenant)

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request, context):
                try:
                    guard()
                    return await inner(request, context)
                except EngineError as e:
                    await context.abort(_status(e), e.message)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                try:
                    guard()
                    async for item in inner_stream(request, context):
                        yield item
                except EngineError as e:
                    await context.abort(_status(e), e.message)

            return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
        return handler
