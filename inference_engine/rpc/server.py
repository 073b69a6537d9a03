"""The grpc.aio server: RuntimeService behind the interceptor, plus standard health and reflection."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..engine.async_engine import AsyncEngine
from .interceptors import ErrorInterceptor
from .pb.kakeya.v1 import runtime_pb2, runtime_pb2_grpc
from .servicer import RuntimeServicer

SERVICE = runtime_pb2.DESCRIPTOR.services_by_name["RuntimeService"].full_name  # "kakeya.v1.RuntimeService"


class RuntimeServer:
    def __init__(self, engine: Callable[[], AsyncEngine], api_keys: Sequence[str] = ()):
        self.engine = engine  # raises EngineDead while loading / after a failure
        self.server = grpc.aio.server(interceptors=[ErrorInterceptor(api_keys)])
        runtime_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeServicer(engine), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port: Optional[int] = None

    async def start(self, address: str) -> int:
        """Serve on "host:port" (port 0: any free port); returns the bound port."""
        self.port = self.server.add_insecure_port(address)
        await self.server.start()
        await self.refresh_health()
        return self.port

    async def refresh_health(self) -> None:
        """SERVING once the engine is up; NOT_SERVING while loading or after an engine failure."""
        try:
            self.engine()
            status = health_pb2.HealthCheckResponse.SERVING
        except Exception:  # noqa: BLE001 - any reason the engine is unavailable
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def stop(self, grace: float = 1.0) -> None:
        await self.server.stop(grace)
