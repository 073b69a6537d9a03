"""A real `kakeya serve` process on 127.0.0.1 (free ports), for tests of what only a process has:
signals, exit status, a failed load, clients that vanish."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import httpx

from http_server import free_port

ROOT = Path(__file__).resolve().parents[1]


class ServeProcess:
    def __init__(self, model: str, *args: str, grpc: bool = False, wait: bool = True):
        self.port = free_port()
        self.grpc_port = free_port() if grpc else 0
        self.cmd = [sys.executable, "-m", "inference_engine", "serve", "--model", model, "--device", "cpu",
                    "--dtype", "float32", "--port", str(self.port), "--grpc-port", str(self.grpc_port), *args]
        self.wait_ready = wait
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServeProcess":
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        if self.wait_ready:
            deadline = time.time() + 120
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            raise RuntimeError(f"kakeya serve did not become healthy:\n{self.stop()}")
        return self

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> tuple[int, str]:
        """Exit status and everything it printed."""
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        out, _ = self.proc.communicate(timeout=30)
        return out

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def metric(url: str, name: str) -> float:
    """One sample of the server's Prometheus text (0 when absent)."""
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
