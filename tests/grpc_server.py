"""A real grpc.aio RuntimeServer on 127.0.0.1 (free port), on its own event-loop thread."""
from __future__ import annotations

import asyncio
import threading

from inference_engine.engine.async_engine import AsyncEngine
from inference_engine.rpc.server import RuntimeServer


class LiveGrpc:
    def __init__(self, engine: AsyncEngine, api_keys=()):
        self.engine = engine
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runtime: RuntimeServer | None = None
        self.api_keys = api_keys

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.runtime.port}"

    def __enter__(self) -> "LiveGrpc":
        self.thread.start()

        async def start() -> None:
            self.runtime = RuntimeServer(lambda: self.engine, self.api_keys)
            await self.runtime.start("127.0.0.1:0")

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runtime.stop(0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
