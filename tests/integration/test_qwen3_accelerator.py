"""Real Qwen3 on a real accelerator (the Mac M4 runner: MPS; also CUDA hosts).

Runs only with `-m integration` where MPS or CUDA is present and the model can be loaded
(KAKEYA_INTEGRATION_MODEL, default Qwen/Qwen3-0.6B from the hub). Skipped only where there is no
accelerator: where one is present a model that does not load *fails* the run, so a green
accelerator run cannot mean that nothing was tested (issue 13).
"""
from __future__ import annotations

import os

import pytest
import torch

from inference_engine.config import ModelConfig
from inference_engine.engine.llm import LLM
from inference_engine.errors import ModelLoadError
from inference_engine.models import load_model
from inference_engine.tokenizer import apply_chat_template
from inference_engine.types import SamplingParams, SpeculativeParams

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qwen3():
    if not (torch.backends.mps.is_available() or torch.cuda.is_available()):
        pytest.skip("no MPS or CUDA device on this machine")
    name = os.environ.get("KAKEYA_INTEGRATION_MODEL", "Qwen/Qwen3-0.6B")
    try:
        return LLM(load_model(ModelConfig(model=name, device="auto", dtype="auto")))
    except ModelLoadError as e:
        pytest.fail(f"an accelerator is present but {name} does not load (hub unreachable? set "
                    f"KAKEYA_INTEGRATION_MODEL to a local directory): {e.message}")


def test_qwen3_answers_on_accelerator(qwen3):
    ids = apply_chat_template(qwen3.tokenizer, [{"role": "user", "content": "What is the capital of France?"}],
                              enable_thinking=False)
    out = qwen3.generate(ids, SamplingParams(max_tokens=32))
    assert "Paris" in out.text


def test_qwen3_ngram_equals_plain_on_copy(qwen3):
    text = "def area(r):\n    return 3.14159 * r * r\n"
    ids = apply_chat_template(qwen3.tokenizer, [{"role": "user", "content": f"Repeat exactly:\n{text}"}],
                              enable_thinking=False)
    sp = SamplingParams(max_tokens=40)
    plain = qwen3.generate(ids, sp, SpeculativeParams("none", 0))
    spec = qwen3.generate(ids, sp, SpeculativeParams("ngram", 4))
    # fp16 batched kernels are not batch-invariant: compare the agreed prefix, which must be long
    agree = next((i for i, (a, b) in enumerate(zip(plain.token_ids, spec.token_ids)) if a != b), len(plain.token_ids))
    assert agree >= 16 and spec.spec.accepted_tokens > 0
