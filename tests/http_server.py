"""A real uvicorn server on 127.0.0.1 (free port) in a background thread, for end-to-end tests."""
from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextlib.contextmanager
def serving(loaded, engine_config=None, **server_kwargs):
    """A real engine on `loaded` behind a LiveServer; yields (server, engine), shuts both down."""
    from inference_engine.config import EngineConfig, ServerConfig
    from inference_engine.engine.async_engine import AsyncEngine
    from inference_engine.engine.llm import LLM
    from inference_engine.http.app import ServerState, create_app

    engine = AsyncEngine(LLM(loaded, engine_config or EngineConfig()))
    try:
        with LiveServer(create_app(ServerState(ServerConfig(**server_kwargs), engine))) as server:
            yield server, engine
    finally:
        engine.shutdown()


def openai_client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
