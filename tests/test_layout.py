"""The code's floors: no import cycle, proposers below the engine, one door for the edges."""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

from inference_engine.engine.async_engine import AsyncEngine
from inference_engine.engine.protocol import Engine, Stream
from inference_engine.engine.request_stream import RequestStream

ROOT = Path(__file__).resolve().parent.parent


def test_no_import_cycle_and_proposers_import_nothing_of_the_engine():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "imports.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0 cycles" in out.stdout


def _members(protocol) -> set[str]:
    names = {n for n, _ in inspect.getmembers(protocol) if not n.startswith("_")}
    return names | set(getattr(protocol, "__annotations__", {})) | ({"__aiter__"} if protocol is Stream else set())


def _has(cls, name: str) -> bool:
    return hasattr(cls, name) or f"self.{name}" in inspect.getsource(cls.__init__)


def test_both_engines_and_their_streams_implement_the_door():
    from inference_engine.cluster.remote import RemoteEngine, RemoteStream

    for cls in (AsyncEngine, RemoteEngine):
        assert {n for n in _members(Engine) if not _has(cls, n)} == set(), cls
        for name in ("add", "add_all"):
            assert list(inspect.signature(getattr(cls, name)).parameters) == \
                list(inspect.signature(getattr(Engine, name)).parameters), (cls, name)
    for cls in (RequestStream, RemoteStream):
        assert {n for n in _members(Stream) if not _has(cls, n)} == set(), cls
