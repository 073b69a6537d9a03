"""GGUF → safetensors, once. Dequantising a GGUF through transformers takes ~30 s here;
the converted checkpoint is cached under the user's cache directory, keyed by the file's
hash (itself remembered per path, size and mtime), so later starts load in about a second."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from tqdm import tqdm


FORMAT = "v2"  # bump when the converted layout changes, so stale caches are rebuilt


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kakeya"


def file_digest(path: Path, memo: Path | None = None) -> str:
    """The file's sha256. With `memo` (a JSON file) it is remembered under the file's path, size,
    mtime and inode, so a warm start does not reread a multi-GB GGUF (≈ 1 s per GB measured)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    seen: dict[str, str] = {}
    if memo is not None and memo.exists():
        try:
            seen = json.loads(memo.read_text())
        except (OSError, ValueError):  # unreadable or half-written by a crash: hash again
            seen = {}
    if key in seen:
        return seen[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    if memo is not None:
        seen[key] = h.hexdigest()
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f"{memo.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(seen, indent=1))
        tmp.replace(memo)  # atomic: concurrent starts never read half a file
    return h.hexdigest()


def converted_dir(gguf_path: Path, cache_dir: Path | None = None) -> Path:
    """The safetensors directory for this GGUF file, converting it first if needed."""
    root = (cache_dir or default_cache_dir()) / "gguf"
    name = f"{gguf_path.stem}-{file_digest(gguf_path, root / 'digests.json')[:16]}-{FORMAT}"
    target = root / name
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    convert(gguf_path, target)
    return target


def convert(gguf_path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    steps = tqdm(total=3, desc=f"Converting {gguf_path.name} to safetensors (one time)", unit="step")
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        steps.update()
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        steps.update()
        # The weights are plain float32 now: drop the GGUF quantizer so the saved checkpoint
        # loads as an ordinary one (any dtype, no quantizer attached).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        steps.update()
    finally:
        steps.close()
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)  # atomic: a crash mid-conversion never leaves a half cache
