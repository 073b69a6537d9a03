"""The one place gRPC statuses come from: bearer-key auth, messages that do not decode, and the
EngineError → status mapping."""
from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Sequence

import grpc
from google.protobuf.message import DecodeError

from ..auth import check_bearer
from ..errors import EngineError

PUBLIC = ("/grpc.health.v1.Health/", "/grpc.reflection.")  # like /healthz over HTTP: no key needed
TENANT: ContextVar[str] = ContextVar("kakeya_tenant", default="")  # the caller's tenant, set per call by guard()


def _status(e: EngineError) -> grpc.StatusCode:
    return grpc.StatusCode[e.grpc_code]


@dataclass(frozen=True)
class _Undecodable:
    """What a request deserializer returns for bytes that are not its message (grpc would say UNKNOWN)."""

    reason: str


def _lenient(deserialize: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def load(data: bytes) -> object:
        try:
            return deserialize(data)
        except DecodeError as e:
            return _Undecodable(str(e))

    return load


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every RuntimeService handler: checks the key, then turns EngineErrors into statuses."""

    def __init__(self, api_keys: Sequence[str] = ()):
        self.api_keys = tuple(api_keys)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(PUBLIC):
            return handler
        keys, metadata = self.api_keys, details.invocation_metadata

        async def guard(request, context) -> None:
            tenant = ""
            if keys:  # the key first: an unauthenticated caller learns nothing about its message
                tenant = check_bearer(dict(metadata or ()).get("authorization", ""), keys,
                                      "metadata `authorization: Bearer <key>`")
            TENANT.set(tenant)
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"the request is not a valid {details.method} message: {request.reason}")

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request, context):
                try:
                    await guard(request, context)
                    return await inner(request, context)
                except EngineError as e:
                    await context.abort(_status(e), e.message)

            return grpc.unary_unary_rpc_method_handler(unary, _lenient(handler.request_deserializer),
                                                       handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                try:
                    await guard(request, context)
                    async for item in inner_stream(request, context):
                        yield item
                except EngineError as e:
                    await context.abort(_status(e), e.message)

            return grpc.unary_stream_rpc_method_handler(stream, _lenient(handler.request_deserializer),
                                                        handler.response_serializer)
        return handler
