"""The native CPU step (csrc/native.cpp): built once per machine, loaded once per process.

The extension is compiled with the machine's own vector instructions (`-march=native`), so its
build directory is keyed by the source, torch's version and the CPU's flags, under the user's
cache directory; `scripts/setup.sh` builds it ahead of the first start (`native.main()`, ~30 s),
so a server start only loads it. Where it cannot be
built (no compiler) `extension()` says why and the engine keeps torch's kernels. torch guards a
build with a lock *file* that a killed build leaves behind, and every later load then waits on it
forever; builds here hold a kernel `flock` (released when its process dies) and clear that file.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import platform
import threading
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

from .gguf_cache import default_cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "native.cpp"
_lock = threading.Lock()
_loaded: Optional[ModuleType] = None
_error: Optional[str] = None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def build_dir() -> Path:
    key = hashlib.sha256(b"\0".join(s.encode() if isinstance(s, str) else s for s in (
        *(f.read_bytes() for f in sorted(SOURCE.parent.glob("*.[ch]*"))), torch.__version__, platform.machine(), _cpu_flags()))).hexdigest()[:16]
    return default_cache_dir() / "native" / key


def extension() -> Optional[ModuleType]:
    """The compiled module, building it on first use; None if it cannot be built (see `error()`)."""
    global _loaded, _error
    with _lock:
        if _loaded is not None or _error is not None:
            return _loaded
        try:
            path = build_dir()
            path.mkdir(parents=True, exist_ok=True)
            with open(path / "build.flock", "w") as held:
                fcntl.flock(held, fcntl.LOCK_EX)  # one build at a time across processes, never stale
                (path / "lock").unlink(missing_ok=True)  # torch's baton file, left by a killed build
                _loaded = _build(path)
        except Exception as e:  # noqa: BLE001 - no compiler, no ninja, a build error: torch's kernels serve
            _error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
            log.warning("native CPU kernels unavailable (%s); using torch's kernels", _error)
        return _loaded


def _build(path: Path) -> ModuleType:
    from torch.utils.cpp_extension import load

    # -fopenmp: at::parallel_for is inline OpenMP; the module then shares torch's libgomp
    # (same soname, already loaded), so its threads are torch's intra-op pool
    flags = ["-O3", "-march=native" if platform.machine() in ("x86_64", "AMD64") else "-mcpu=native", "-fopenmp"]
    return load(name=f"kakeya_native_{path.name}", sources=[str(SOURCE)], extra_cflags=flags,
                extra_ldflags=["-fopenmp"], build_directory=str(path), verbose=False)


def error() -> Optional[str]:
    """Why `extension()` returned None (None if it has not failed)."""
    return _error


def main() -> None:
    """scripts/setup.sh: build ahead of the first start."""
    print(f"native kernels: {'ready in ' + str(build_dir()) if extension() else 'unavailable: ' + str(error())}")
