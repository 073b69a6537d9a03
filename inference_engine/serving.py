"""`kakeya serve`'s lifecycle: load the model beside the live edges, serve, and stop cleanly.

SIGTERM/SIGINT start a drain: both edges refuse new work (HTTP 503 `shutting_down`, gRPC
UNAVAILABLE, health NOT_SERVING), in-flight requests get `shutdown_grace` seconds to finish,
the rest are aborted (streams end with finish_reason "abort" and [DONE], non-streaming
requests get 503), then uvicorn, gRPC and the engine thread stop and the process exits 0.
A second signal skips the grace period. A model that fails to load exits 1 with its message.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from typing import Callable, Optional

import uvicorn

from .config import ServerConfig
from .engine.async_engine import AsyncEngine
from .errors import EngineError
from .http.app import ServerState, create_app

log = logging.getLogger("kakeya")
FLUSH_S = 2.0  # after the aborts, how long responses may take to reach their clients


class _Server(uvicorn.Server):
    """uvicorn that hands signals to our drain instead of dropping connections at once. Signals are
    not re-raised after serve() (uvicorn's default), so the exit status is ours."""

    def __init__(self, config: uvicorn.Config, loop: asyncio.AbstractEventLoop, on_signal: Callable[[], None]):
        super().__init__(config)
        self.loop, self.on_signal = loop, on_signal

    def handle_exit(self, sig, frame) -> None:  # a signal handler: only hand over to the loop
        self.loop.call_soon_threadsafe(self.on_signal)


def say(message: str) -> None:
    """One line of server status on stderr, as every `kakeya` command prints it."""
    print(f"[kakeya] {message}", file=sys.stderr, flush=True)


async def serve(config: ServerConfig, build: Callable[[], AsyncEngine]) -> int:
    """Run both edges until a signal or a failed load; returns the process exit status."""
    loop = asyncio.get_running_loop()
    state = ServerState(config)
    status = 0
    grpc_server = None
    if config.grpc_port:
        from .rpc.server import RuntimeServer

        grpc_server = RuntimeServer(state.ready, config.api_keys)
        await grpc_server.start(f"{config.host}:{config.grpc_port}")
    drain: Optional[asyncio.Task] = None
    skip_grace = asyncio.Event()

    def on_signal() -> None:
        nonlocal drain
        if drain is None:
            drain = asyncio.ensure_future(_drain(state, server, grpc_server, config.shutdown_grace, skip_grace))
        else:  # a second signal: stop waiting
            skip_grace.set()

    def loaded(engine: Optional[AsyncEngine], error: Optional[str]) -> None:  # on the loop
        nonlocal status
        if error is not None:
            status = 1
            state.load_error = error
            say(f"error: the model failed to load: {error}")
            server.should_exit = True
            return
        if state.draining:  # a signal came while loading
            engine.shutdown()
            return
        state.attach(engine)
        if grpc_server is not None:
            asyncio.ensure_future(grpc_server.refresh_health())
        asyncio.ensure_future(announce(engine))

    async def announce(engine: AsyncEngine) -> None:  # which configuration is live, and why
        info, path = engine.info, (await engine.health())["decode_path"]
        grpc_note = f" and grpc {config.host}:{config.grpc_port}" if grpc_server else ""
        say(f"serving {info.name} on {info.device} ({info.dtype}; weights {info.quantization}: {info.quantization_reason}; "
            f"decode path {path}) at http://{config.host}:{config.port}/v1{grpc_note}")

    def load() -> None:  # both edges answer "unavailable" until this finishes
        try:
            engine, error = build(), None
        except EngineError as e:
            engine, error = None, e.message
        except Exception as e:  # noqa: BLE001 - any loader failure ends the process with its message
            engine, error = None, f"{type(e).__name__}: {e}"
        try:
            loop.call_soon_threadsafe(loaded, engine, error)
        except RuntimeError:  # the server already stopped
            if engine is not None:
                engine.shutdown()

    server = _Server(uvicorn.Config(create_app(state), host=config.host, port=config.port, log_level="info",
                                    timeout_graceful_shutdown=FLUSH_S), loop, on_signal)
    threading.Thread(target=load, name="kakeya-load", daemon=True).start()
    try:
        await server.serve()
    finally:
        if drain is not None:
            await drain
        if grpc_server is not None:
            await grpc_server.stop(FLUSH_S)  # in-flight Generates already ended (done or aborted)
        if state.engine is not None:
            state.engine.shutdown()
    if drain is not None:
        say("stopped")
    return status


async def _drain(state: ServerState, server: _Server, grpc_server, grace: float, skip: asyncio.Event) -> None:
    state.draining = True
    if grpc_server is not None:
        await grpc_server.refresh_health()  # NOT_SERVING: ready() now raises ShuttingDown
    engine = state.engine
    busy = engine.num_active if engine is not None else 0
    say(f"shutting down: refusing new requests; {busy} in flight, waiting up to {grace:g} s")
    deadline = time.monotonic() + grace
    while engine is not None and engine.num_active and time.monotonic() < deadline and not skip.is_set():
        try:
            await asyncio.wait_for(skip.wait(), 0.05)
        except asyncio.TimeoutError:
            pass
    if engine is not None and engine.alive and engine.num_active:
        n = await engine.abort_all()
        say(f"grace period over: aborted {n} request(s)")
        # let the aborted responses (final chunks, 503s) reach their clients before connections close
        end = time.monotonic() + FLUSH_S
        while server.server_state.tasks and time.monotonic() < end:
            await asyncio.sleep(0.05)
    server.should_exit = True
