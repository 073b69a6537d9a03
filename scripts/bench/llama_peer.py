"""The llama.cpp peer, seen from the project venv: a llama-cpp-python subprocess in its own cached
venv (scripts/bench/install_llama_cpp.sh), driven over a JSON-lines pipe (peers/llama_cpp_peer.py)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Optional, Sequence

PEER = Path(__file__).parent / "peers" / "llama_cpp_peer.py"
INSTALL = Path(__file__).parent / "install_llama_cpp.sh"


def venv_python() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("KAKEYA_LLAMA_VENV", cache / "kakeya" / "llama-cpp-venv")) / "bin" / "python"


def missing_reason() -> Optional[str]:
    """Why the peer cannot run (None: it can)."""
    py = venv_python()
    if not py.exists() or subprocess.run([str(py), "-c", "import llama_cpp"], capture_output=True).returncode:
        return f"llama-cpp-python is not installed in {py.parent.parent}; build it once with `bash {INSTALL}` (~20-35 min on 2 cores)"
    return None


class LlamaCppPeer:
    def __init__(self, gguf: Path):
        self.proc = subprocess.Popen([str(venv_python()), str(PEER), str(gguf)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        hello = json.loads(self.proc.stdout.readline())
        self.version = hello["llama_cpp_python"]

    def generate(self, ids: Sequence[int], max_tokens: int, stop: Sequence[int] = (), lookup: bool = False,
                 fresh: bool = False) -> tuple[list[int], float]:
        """Greedy tokens and the seconds the peer measured. `fresh` drops its cached prompt KV first."""
        req = {"ids": list(ids), "max_tokens": max_tokens, "stop": list(stop), "lookup": lookup, "fresh": fresh}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        return out["ids"], out["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
