"""Load a verifier from a Hugging Face id, a local directory or a .gguf file."""
from .loader import LoadedModel, ModelInfo, load_model
from .device import resolve_device, resolve_dtype

__all__ = ["LoadedModel", "ModelInfo", "load_model", "resolve_device", "resolve_dtype"]
