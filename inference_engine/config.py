"""Configuration as frozen dataclasses, built once from argv + environment by the CLI and passed down."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .types import SpeculativeParams


@dataclass(frozen=True, slots=True)
class ModelConfig:
    model: Optional[str] = None  # HF id | local dir | .gguf file; None = embedded SmolLM2-135M-Instruct
    device: str = "auto"         # auto | cpu | mps | cuda
    dtype: str = "auto"          # auto | float32 | bfloat16 | float16
    cache_dir: Optional[str] = None  # GGUF→safetensors conversions; None = user cache dir
    quantization: str = "auto"       # auto | none | int8 | int4 (torch's packed kernels) | gguf (GGUF blocks, native kernels)
    verify_weights: str = "auto"     # auto | same | bf16: bfloat16 copy for verify/prefill of a quantized model


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_running: int = 8     # requests decoding at once
    max_waiting: int = 64    # queued beyond the running slots; more than max_running + max_waiting admitted → Overloaded
    speculative: SpeculativeParams = field(default_factory=SpeculativeParams)  # server-wide default
    ngram_max: int = 4
    ngram_min: int = 2
    max_draft_tokens: int = 16
    default_temperature: float = 1.0  # of an HTTP request naming none (OpenAI's default; llama-server's --temp)
    default_max_tokens: Optional[int] = None  # output cap of an HTTP request naming none (llama-server's -n); None: the rest of the context
    suffix_cache_tokens: int = 100_000  # memory bound of the cross-request suffix index
    adaptive_max_k: int = 16            # longest draft the controller considers (calibrated k = 0..16)
    calibration_file: Optional[str] = None  # cache of measured verify-cost curves; None: the server's (user cache dir), "": none
    cost_curve: Optional[tuple[float, ...]] = None  # pin t(k)/t(0) instead of measuring (reproducible runs)
    max_batch: int = 8                  # decoding requests verified together in one forward
    session_cache_bytes: int = 1 << 30  # KV bytes the session store / prefix cache may hold (LRU)
    session_ttl: float = 3600.0         # seconds an idle session lives
    max_sessions: int = 256             # open client sessions; beyond → TooManySessions
    prefix_cache: bool = True           # stateless requests reuse the longest cached prefix
    fast_path: bool = True              # models/fast.py for Llama-family models; False = transformers forward
    compile: bool = False               # compile the fast path's one-token step (in the background)
    cuda_graphs: Optional[bool] = None  # one-token steps as CUDA graphs; None = on CUDA devices
    share_cache_across_keys: bool = False  # one prefix cache and suffix index for all API keys (a side channel)
    kv_window: Optional[tuple[int, int]] = None  # (sink, window): KV keeps the first sink + last window positions


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()       # empty: no auth
    max_body_bytes: int = 4 * 1024 * 1024
    allowed_origins: tuple[str, ...] = ()  # CORS: browser origins allowed to call the API ("*": any); none by default
    keepalive_seconds: float = 10.0      # SSE comment pings while a long prefill runs
    grpc_port: int = 50051               # kakeya.v1 RuntimeService on `host`; 0 = off
    shutdown_grace: float = 30.0         # seconds in-flight requests may finish after SIGTERM before abort
