"""A GGUF file's Q4_0 / Q4_1 blocks as int4 codes, scales and minimums, under transformers' names.

ggml block layouts (32 weights each): Q4_0 = fp16 d, 16 bytes of nibbles, w = d · (q - 8);
Q4_1 = fp16 d, fp16 m, 16 bytes of nibbles, w = d · q + m. Byte j holds weight j in its low
nibble and weight j + 16 in its high nibble. Both map exactly onto torch's int4 kernel with
group size 32 (scale d, minimum m, or -8 · d for Q4_0). Llama GGUFs store attn_q / attn_k
rows permuted for ggml's rope; we undo it as transformers does when it dequantizes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

GGUF_TO_HF = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def _unpermute(x: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf's rope permutation of rows (transformers' _reverse_permute_weights)."""
    dim = x.shape[0] // n_head // 2
    return x.reshape(n_head, dim, 2, *x.shape[1:]).swapaxes(2, 1).reshape(x.shape)


def read_q4_blocks(path: Path, num_heads: int, num_kv_heads: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """{"model.layers.i.self_attn.q_proj": (codes [N, K] int32, scales [N, K/32], mins [N, K/32])}"""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode() if field else ""
    Q = gguf.GGMLQuantizationType
    out = {}
    for t in reader.tensors:
        parts = t.name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in GGUF_TO_HF or t.tensor_type not in (Q.Q4_0, Q.Q4_1):
            continue
        codes, d, m = _q4(t, Q)
        if arch == "llama" and parts[2] in ("attn_q", "attn_k"):
            heads = num_heads if parts[2] == "attn_q" else num_kv_heads
            codes, d, m = (_unpermute(a, heads) for a in (codes, d, m))
        name = f"model.layers.{parts[1]}.{GGUF_TO_HF[parts[2]]}"
        out[name] = (torch.from_numpy(codes.astype(np.int32)), torch.from_numpy(d), torch.from_numpy(m))
    return out


def _q4(t, Q) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Q4_0 / Q4_1 tensor's codes [N, K], scales and minimums [N, K/32] (float32)."""
    size = 20 if t.tensor_type == Q.Q4_1 else 18
    raw = np.asarray(t.data, dtype=np.uint8)
    blocks = raw.reshape(raw.shape[0], -1, size)  # [N, G, bytes]
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # [N, G]
    if t.tensor_type == Q.Q4_1:
        m, qs = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32), blocks[..., 4:]
    else:
        m, qs = -8.0 * d, blocks[..., 2:]
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(raw.shape[0], -1), d, m  # codes [N, K]


def q6k_codes(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Q6_K tensor's rows of 210-byte blocks [N, K/256·210] → codes − 32 int8 [N, K], scales int8
    [N, K/16], d float16 [N, K/256]; the bit order is gguf-py's `Q6_K.dequantize_blocks`."""
    N = raw.shape[0]
    blocks = raw.reshape(N, -1, 210)  # [N, S, ql 128 | qh 64 | scales 16 | d 2]
    S = blocks.shape[1]
    ql, qh = blocks[..., :128], blocks[..., 128:192]
    ql = (ql.reshape(N, S, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 1, 2, 1)) & 0x0F
    qh = (qh.reshape(N, S, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 1, 4, 1)) & 0x03
    q = (ql.reshape(N, S, 2, 4, 32) | (qh.reshape(N, S, 2, 4, 32) << 4)).astype(np.int8) - np.int8(32)
    scales = blocks[..., 192:208].copy().view(np.int8).reshape(N, S * 16)
    d = blocks[..., 208:210].copy().view(np.float16).reshape(N, S)
    return q.reshape(N, S * 256), scales, d


def read_head(path: Path) -> dict[str, torch.Tensor]:
    """The output head's blocks in ggml's layout ("qs", "d", and "m" for 4-bit): `output.weight`,
    or the tied `token_embd.weight` where the file has no separate head; Q6_K as ("q6", "sc", "d")
    (q6k_codes); {} unless Q8_0, Q4_0, Q4_1 or Q6_K."""
    import gguf

    from .block_linear import pack_nibbles

    Q = gguf.GGMLQuantizationType
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    t = tensors.get("output.weight") or tensors.get("token_embd.weight")
    if t is not None and t.tensor_type in (Q.Q4_0, Q.Q4_1):
        codes, d, m = _q4(t, Q)
        return {"qs": pack_nibbles(torch.from_numpy(codes.astype(np.int32))), "d": torch.from_numpy(d).half(),
                "m": torch.from_numpy(m).half()}
    if t is not None and t.tensor_type == Q.Q6_K:  # what llama.cpp's quantizer writes for the head
        return dict(zip(("q6", "sc", "d"), (torch.from_numpy(a) for a in q6k_codes(np.asarray(t.data, dtype=np.uint8)))))
    if t is None or t.tensor_type != Q.Q8_0:
        return {}
    raw = np.asarray(t.data, dtype=np.uint8)
    blocks = raw.reshape(raw.shape[0], -1, 34)  # [V, G, fp16 d + 32 int8]
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    q = blocks[..., 2:].copy().view(np.int8).reshape(raw.shape[0], -1)
    return {"qs": torch.from_numpy(q), "d": torch.from_numpy(d.copy())}


def packed_blocks(path: Path, num_heads: int, num_kv_heads: int, cache: Path) -> dict[str, torch.Tensor]:
    """The file's Q4 layers and its head (Q8_0, Q4_0, Q4_1 or Q6_K) in the native kernels' tiles
    ("<layer>.tiles", and "<layer>.n": its output columns), read and rearranged once and kept in
    `cache` (a safetensors file beside the converted checkpoint): parsing the GGUF's metadata
    alone takes seconds, loading the cache a fraction of one, and the loaded tiles are the
    weights themselves (no second copy at start-up)."""
    from safetensors.torch import load_file, save_file

    from . import native
    from .block_linear import pack_nibbles

    if cache.exists():
        return load_file(cache)
    out = {}
    for name, (codes, d, m) in read_q4_blocks(path, num_heads, num_kv_heads).items():
        out.update({f"{name}.tiles": native.extension().pack_blocks(pack_nibbles(codes), d.half(), m.half()),
                    f"{name}.n": torch.tensor([codes.shape[0]])})
    head = read_head(path)
    if "q6" in head:
        out["lm_head.tiles"] = native.extension().pack_q6k(head["q6"], head["sc"], head["d"])
    elif head:
        out["lm_head.tiles"] = native.extension().pack_blocks(head["qs"], head["d"], head.get("m", torch.zeros(0)))
    if head:
        out["lm_head.n"] = torch.tensor([next(iter(head.values())).shape[0]])
    tmp = cache.with_name(cache.name + ".tmp")
    save_file(out, tmp)
    tmp.replace(cache)  # atomic: a crash never leaves half a cache
    for old in cache.parent.glob("blocks-v*.safetensors"):  # earlier layouts' caches
        if old != cache:
            old.unlink(missing_ok=True)
    return out
