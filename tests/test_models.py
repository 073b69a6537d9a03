"""Model loading: local directory, the embedded GGUF default with its safetensors cache, devices, errors."""
from __future__ import annotations

import shutil
import time

import pytest
import torch

from inference_engine.config import ModelConfig
from inference_engine.errors import InvalidRequest, ModelLoadError
from inference_engine.models import load_model, resolve_device, resolve_dtype
from inference_engine.models.gguf_cache import converted_dir, default_cache_dir
from inference_engine.models.loader import default_gguf, resolve_source


def test_local_directory_loads(tiny_loaded, tiny_qwen3_dir):
    info = tiny_loaded.info
    assert info.name == tiny_qwen3_dir.name and info.source == str(tiny_qwen3_dir)
    assert (info.device, info.dtype, info.vocab_size, info.max_context) == ("cpu", "float32", 151936, 1024)


def test_dtype_choice(tiny_qwen3_dir):
    loaded = load_model(ModelConfig(model=str(tiny_qwen3_dir), device="cpu", dtype="bfloat16"))
    assert loaded.model.dtype == torch.bfloat16 and loaded.info.dtype == "bfloat16"


def test_device_and_dtype_resolution():
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("mps")) == torch.float16
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(InvalidRequest, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(InvalidRequest, match="unknown dtype"):
        resolve_dtype("int3", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(InvalidRequest, match="not available"):
            resolve_device("cuda")


def test_missing_paths_say_what_is_wrong(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_source(str(tmp_path / "nope.gguf"), None)
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_source(str(tmp_path), None)
    with pytest.raises(ModelLoadError, match="model path not found"):
        resolve_source("./does/not/exist", None)
    assert resolve_source("Qwen/Qwen3-0.6B", None) == ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B")


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here; the loader must say so, not crash
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(ModelConfig(model="kakeya-test/definitely-not-a-model", device="cpu"))


def test_default_model_is_found_in_installed_package():
    path = default_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "kakeya"


def test_file_digest_is_remembered_until_the_file_changes(tmp_path):
    """A warm start reads the digest from the memo; a changed file (size or mtime) is hashed again."""
    import hashlib
    import json

    from inference_engine.models.gguf_cache import file_digest

    f, memo = tmp_path / "model.gguf", tmp_path / "digests.json"
    f.write_bytes(b"GGUF" * 1000)
    assert file_digest(f, memo) == hashlib.sha256(f.read_bytes()).hexdigest()
    (key,) = json.loads(memo.read_text())
    memo.write_text(json.dumps({key: "remembered"}))
    assert file_digest(f, memo) == "remembered"  # not reread
    f.write_bytes(b"GGUF" * 1001)
    assert file_digest(f, memo) == hashlib.sha256(f.read_bytes()).hexdigest()
    memo.write_text("{half a fil")  # a memo a crash cut short: hashed again, and repaired
    assert file_digest(f, memo) == hashlib.sha256(f.read_bytes()).hexdigest() and json.loads(memo.read_text())


@pytest.mark.real_model
def test_gguf_conversion_is_cached_and_reused(smol_loaded, tmp_path):
    # The session fixture already converted the default GGUF into the user cache dir.
    src = default_gguf()
    cached = converted_dir(src)
    assert (cached / "model.safetensors").exists() and (cached / "tokenizer.json").exists()
    assert smol_loaded.info.source == str(cached)
    # A second start resolves to the same directory without converting again.
    t0 = time.perf_counter()
    assert converted_dir(src) == cached
    assert time.perf_counter() - t0 < 10  # hashing only; conversion takes ~30 s
    # A .gguf path given explicitly goes through the same cache, keyed by content.
    copy = tmp_path / src.name
    shutil.copy(src, copy)
    assert resolve_source(str(copy), str(cached.parent.parent))[1] == str(cached)
