"""Device and dtype choice: auto picks cuda, then mps, then cpu; float32 on CPU for exactness,
bfloat16 on CUDA where the card has it (float16 otherwise, and on MPS)."""
from __future__ import annotations

import torch

from ..errors import InvalidRequest

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name not in available:
        raise InvalidRequest(f"unknown device {name!r}; expected auto, cpu, mps or cuda", "device")
    if not available[name]:
        raise InvalidRequest(f"device {name!r} is not available on this machine", "device")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32 if device.type == "cpu" else torch.float16
    if name not in DTYPES:
        raise InvalidRequest(f"unknown dtype {name!r}; expected auto, {', '.join(DTYPES)}", "dtype")
    return DTYPES[name]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels, so a timer measures them rather than their launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
