"""Weight-only int8/int4 on torch's packed CPU kernels: the quantized layers against what they claim,
and the quantized model through the engine against the same quantized model run eagerly by HF."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from inference_engine.config import EngineConfig, ModelConfig
from inference_engine.engine.llm import LLM
from inference_engine.models import LoadedModel, load_model
from inference_engine.models.quantize import Int4Linear, Int8Linear, effective_weight, quantize
from inference_engine.tokenizer import apply_chat_template
from inference_engine.types import SamplingParams, SpeculativeParams

PROMPT = [151644, 872, 198, 9707, 11, 1879, 30, 151645, 198, 151644, 77091, 198]


def _rounding(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What reading the weight back through a kernel of `dtype` may add: one ulp of the value."""
    return w.abs() * (2.0**-7 if dtype == torch.bfloat16 else 2.0**-20) + 1e-7


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_layer(dtype):
    torch.manual_seed(0)
    lin = nn.Linear(96, 160, bias=True).to(dtype)
    q = Int8Linear(lin)
    w = effective_weight(q).float()
    step = lin.weight.float().abs().amax(dim=1, keepdim=True) / 127  # one quantization step per row
    assert ((w - lin.weight.float()).abs() <= step / 2 * 1.001 + _rounding(w, dtype)).all()
    x = torch.randn(5, 96, dtype=dtype)
    ref = x.float() @ w.T + lin.bias.float()
    assert torch.allclose(q(x).float(), ref, atol=1e-4 if dtype == torch.float32 else 0.05)
    assert q.weight.dtype == torch.int8 and q.weight.numel() == lin.weight.numel()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_layer(dtype):
    torch.manual_seed(1)
    lin = nn.Linear(128, 64, bias=False).to(dtype)
    q = Int4Linear.from_linear(lin, group_size=32)
    w = effective_weight(q).float()
    groups = lin.weight.float().reshape(64, 4, 32)
    step = (groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)) / 15
    err = (w.reshape(64, 4, 32) - groups).abs()
    assert (err <= step / 2 * 1.001 + _rounding(w, dtype).reshape(64, 4, 32)).all()
    x = torch.randn(3, 2, 128, dtype=dtype)
    ref = x.float() @ w.T
    assert torch.allclose(q(x).float(), ref, atol=1e-4 if dtype == torch.float32 else 0.05)
    assert q.weight.numel() * q.weight.element_size() == lin.weight.numel() // 2  # 4 bits per weight


def test_quantize_replaces_every_linear_and_rejects_unknown(tiny_loaded):
    model = copy.deepcopy(tiny_loaded.model)
    n = quantize(model, "int8")
    assert n == sum(1 for m in tiny_loaded.model.modules() if isinstance(m, nn.Linear)) and n > 0
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    with pytest.raises(ValueError, match="int8, int4"):
        quantize(model, "int3")


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_engine_equals_quantized_hf_reference(tiny_loaded, method):
    """Our engine on the quantized model == HF eager generate on the same quantized model, greedy,
    and speculation on top of it changes nothing."""
    model = copy.deepcopy(tiny_loaded.model)
    quantize(model, method)
    llm = LLM(LoadedModel(model, tiny_loaded.tokenizer, tiny_loaded.info), EngineConfig(prefix_cache=False))
    sp = SamplingParams(max_tokens=24, ignore_eos=True)
    ours = llm.generate(PROMPT, sp, SpeculativeParams("none", 0)).token_ids
    with torch.inference_mode():
        ids = torch.tensor([PROMPT])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(PROMPT):].tolist()
    assert ours == ref
    assert llm.generate(PROMPT, sp, SpeculativeParams("ngram", 4)).token_ids == ours
    # a fresh engine on the same model (the cold benchmark's case) reuses the fused layers
    again = LLM(LoadedModel(model, tiny_loaded.tokenizer, tiny_loaded.info), EngineConfig(prefix_cache=False))
    first, second = llm.core.verifier.fast.blocks[0], again.core.verifier.fast.blocks[0]
    assert second.qkv is first.qkv and second.gate_up is first.gate_up
    assert again.generate(PROMPT, sp, SpeculativeParams("none", 0)).token_ids == ours
    plain_float = LLM(tiny_loaded, EngineConfig()).generate(PROMPT, sp, SpeculativeParams("none", 0)).token_ids
    assert len(set(ours)) > 5 and ours != [plain_float[0]] * 24  # a real model, not a constant


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_int4_layout_checks_under_each_cpu_capability(capability):
    """DESIGN §4: torch picks the packed int4 layout by vector width (rows interleaved in blocks of
    64 under AVX-512, 32 under AVX2), so the gate's result must not depend on the CPU: the int4
    layer and fusion tests (no model, so seconds) rerun in a process forced to AVX2 and in one on
    the machine's default (the variable only counts before torch is imported, hence a subprocess)."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if capability != "default":
        if not torch.cpu._is_avx2_supported():  # what the hardware has, whatever the variable says
            pytest.skip("this CPU has no AVX2: the default capability is the only one")
        env["ATEN_CPU_CAPABILITY"] = capability
    run = ("import sys, pytest, torch; print('capability', torch.backends.cpu.get_cpu_capability()); "
           "sys.exit(pytest.main(['-q', '-k', 'int4 and (fuse or layer) and not cpu_capability', "
           "'tests/test_fast_path.py', 'tests/test_quantize.py']))")
    out = subprocess.run([sys.executable, "-c", run], cwd=Path(__file__).parents[1], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
    assert capability == "default" or f"capability {capability.upper()}" in out.stdout, out.stdout[:200]


@pytest.mark.real_model
def test_smollm2_int8_still_knows_paris(tmp_path):
    loaded = load_model(ModelConfig(device="cpu", dtype="float32", quantization="int8"))
    assert loaded.info.quantization == "int8"
    ids = apply_chat_template(loaded.tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    out = LLM(loaded).generate(ids, SamplingParams(max_tokens=24))
    assert "Paris" in out.text


@pytest.mark.real_model
def test_gguf_q4_1_blocks_served_as_they_are(smol_float):
    """int4 on the GGUF keeps the file's Q4_1 blocks: every decoder layer's effective weight equals
    the weight transformers dequantizes from the same blocks (fp32 rounding of m + 8·d aside), and
    the answer is unchanged in substance."""
    loaded = load_model(ModelConfig(device="cpu", dtype="float32", quantization="int4"))
    floats = dict(smol_float.model.named_modules())
    layers = [(n, m) for n, m in loaded.model.named_modules() if isinstance(m, Int4Linear) and ".layers." in n]
    assert len(layers) == 30 * 7
    for name, layer in layers[:14] + layers[-7:]:  # first two and last layer: q/k (permuted), v, o, mlp
        ref = floats[name].weight
        assert (effective_weight(layer) - ref).abs().max() <= 1e-6 * ref.abs().max(), name
    ids = apply_chat_template(loaded.tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    assert isinstance(loaded.model.lm_head, Int8Linear)  # the output layer keeps 8 bits
    assert "Paris" in LLM(loaded).generate(ids, SamplingParams(max_tokens=16)).text
