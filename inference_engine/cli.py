"""`kakeya` command line. Config is built here once, from argv and KAKEYA_* environment, and passed down."""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from .config import EngineConfig, ModelConfig, ServerConfig
from .errors import EngineError
from .types import SPEC_METHODS, SamplingParams, SpeculativeParams


def _env(name: str, default: Optional[str] = None) -> Optional[str]:
    return os.environ.get(f"KAKEYA_{name}", default)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=_env("MODEL"), help="HF id, local directory or .gguf file (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default=_env("DEVICE", "auto"), choices=["auto", "cpu", "mps", "cuda"])
    p.add_argument("--dtype", default=_env("DTYPE", "auto"), choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--quantization", default=_env("QUANTIZATION", "auto"), choices=["auto", "none", "int8", "int4", "gguf"],
                   help="weights on CPU: gguf = the GGUF's own Q4/Q8_0 blocks on Kakeya's native kernels (float32 "
                        "activations, exact speculation); int8/int4 = torch's packed kernels (activations keep "
                        "--dtype); auto (default) = gguf for a GGUF file on CPU where the kernels build, else none")
    p.add_argument("--verify-weights", default=_env("VERIFY_WEIGHTS", "auto"), choices=["auto", "same", "bf16"],
                   help="with --quantization and bfloat16: verify/prefill on a bfloat16 copy of the weights "
                        "(bf16), on the quantized ones (same), or whichever start-up timing finds cheaper (auto)")
    p.add_argument("--cache-dir", default=_env("CACHE_DIR"), help="where GGUF conversions are cached")
    p.add_argument("--speculative-method", default=_env("SPECULATIVE_METHOD", "auto"),
                   choices=SPEC_METHODS,
                   help="default for requests; auto = suffix drafts with k chosen per step (0 when drafting does not pay)")
    p.add_argument("--num-draft-tokens", type=int, default=int(_env("NUM_DRAFT_TOKENS", "8")),
                   help="k for fixed methods, the cap for auto")
    p.add_argument("--kv-window", type=_kv_window, default=_kv_window(_env("KV_WINDOW", "0,0")), metavar="SINK,WINDOW",
                   help="keep only the first SINK and the last WINDOW positions of each request's KV (StreamingLLM; "
                        "docs/architecture.md); 0,0 (default): the full cache")
    p.add_argument("--draft-model", default=_env("DRAFT_MODEL"), help="smaller model sharing the tokenizer (enables 'draft')")
    p.add_argument("--suffix-cache-tokens", type=int, default=int(_env("SUFFIX_CACHE_TOKENS", "100000")),
                   help="memory bound of the cross-request suffix index, in tokens")
    p.add_argument("--eager", action="store_true", default=_env("EAGER") == "1",
                   help="run the transformers forward instead of the fast path (the reference; slower)")
    p.add_argument("--compile", action="store_true", default=_env("COMPILE") == "1",
                   help="compile the fast path's one-token step in the background and swap it in when ready "
                        "(/healthz decode_path says which is live; docs/architecture.md)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay one-token decode steps as CUDA graphs (default: on when the device is CUDA)")


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(_env("PORT", "8000")))
    p.add_argument("--api-key", action="append", default=None,
                   help="accepted bearer key (repeatable); also KAKEYA_API_KEYS=key1,key2")
    p.add_argument("--max-running", type=int, default=int(_env("MAX_RUNNING", "8")))
    p.add_argument("--max-waiting", type=int, default=int(_env("MAX_WAITING", "64")))
    p.add_argument("--temperature", dest="default_temperature", metavar="T", type=_temperature,
                   default=_env("TEMPERATURE", "1.0"),
                   help="temperature for HTTP requests that set none (default 1.0, OpenAI's; 0: greedy), "
                        "as llama-server's --temp")
    p.add_argument("--max-tokens", dest="default_max_tokens", metavar="N", type=_max_tokens, default=_env("MAX_TOKENS", "0"),
                   help="output cap for HTTP requests that set none (agents such as Codex CLI send none); "
                        "default: the rest of the context, as llama-server's -n -1 and vLLM")
    p.add_argument("--allowed-origins", default=_env("ALLOWED_ORIGINS", ""),
                   help="comma-separated browser origins allowed by CORS ('*' for any; default: none)")
    p.add_argument("--grpc-port", type=int, default=int(_env("GRPC_PORT", "50051")),
                   help="kakeya.v1 RuntimeService port on --host (0 disables gRPC)")
    p.add_argument("--session-cache-bytes", type=int, default=int(_env("SESSION_CACHE_BYTES", str(1 << 30))),
                   help="KV bytes kept for sessions and the prefix cache (LRU beyond)")
    p.add_argument("--session-ttl", type=float, default=float(_env("SESSION_TTL", "3600")),
                   help="seconds an idle session is kept")
    p.add_argument("--max-sessions", type=int, default=int(_env("MAX_SESSIONS", "256")))
    p.add_argument("--shutdown-grace", type=float, default=float(_env("SHUTDOWN_GRACE", "30")),
                   help="seconds in-flight requests may finish after SIGTERM/SIGINT before they are aborted")
    p.add_argument("--share-cache-across-keys", action="store_true", default=_env("SHARE_CACHE_ACROSS_KEYS") == "1",
                   help="one prefix cache and suffix index for all API keys (faster, but a side channel: "
                            "one key can learn another's prompts from cached_tokens and speculation stats)")


def _kv_window(text: str) -> tuple[int, int] | None:
    try:
        sink, window = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SINK,WINDOW (two integers), got {text!r}") from None
    if sink < 0 or window < 0:
        raise argparse.ArgumentTypeError(f"SINK and WINDOW must be >= 0, got {text!r}")
    return (sink, window) if window else None


def _max_tokens(text: str) -> int | None:
    """N >= 1 tokens, or 0 for none (the rest of the context); argparse also converts the env default."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: the rest of the context), got {n}")
    return n or None


def _temperature(text: str) -> float:
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= t <= 2.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 2], got {t}")
    return t


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kakeya", description="Kakeya: local LLM inference with lossless speculative decoding")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="stream one chat answer to the terminal, then print its stats")
    gen.add_argument("prompt", nargs="?", default="What is the capital of France?")
    gen.add_argument("--system", default=None, help="optional system message")
    gen.add_argument("--max-tokens", type=int, default=256)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    _model_args(gen)
    serve = sub.add_parser("serve", help="run the OpenAI-compatible HTTP server")
    _server_args(serve)
    _model_args(serve)
    cluster = sub.add_parser("cluster", help="the same HTTP API over N engine replicas on Ray Serve (docs/cluster.md)")
    _server_args(cluster)
    cluster.add_argument("--replicas", type=int, default=int(_env("REPLICAS", "2")))
    cluster.add_argument("--ray-address", default=_env("RAY_ADDRESS"), help="join this Ray cluster (default: start one here)")
    cluster.add_argument("--no-affinity", action="store_true",
                         help="route least-loaded instead of by session id / prompt prefix")
    cluster.add_argument("--threads-per-replica", type=int, default=1, help="torch threads of each replica")
    _model_args(cluster)
    # its options are the suite's own (`kakeya bench --help`): main() hands them over untouched
    sub.add_parser("bench", help="run the benchmark suite (scripts/bench/suite.py) and regenerate docs/benchmarks.md",
                   add_help=False)
    return parser


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(model=args.model, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir,
                       quantization=args.quantization, verify_weights=args.verify_weights)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    from .models.gguf_cache import default_cache_dir

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    return EngineConfig(
        max_running=getattr(args, "max_running", 8),
        max_waiting=getattr(args, "max_waiting", 64),
        speculative=SpeculativeParams(args.speculative_method, args.num_draft_tokens),
        suffix_cache_tokens=args.suffix_cache_tokens,
        default_max_tokens=getattr(args, "default_max_tokens", None),
        default_temperature=getattr(args, "default_temperature", 1.0),
        calibration_file=str(cache / "calibration.json"),
        max_batch=getattr(args, "max_running", 8),
        session_cache_bytes=getattr(args, "session_cache_bytes", 1 << 30),
        session_ttl=getattr(args, "session_ttl", 3600.0),
        max_sessions=getattr(args, "max_sessions", 256),
        fast_path=not args.eager,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        share_cache_across_keys=getattr(args, "share_cache_across_keys", False),
        kv_window=args.kv_window,
    )


def server_config(args: argparse.Namespace) -> ServerConfig:
    keys = list(args.api_key or []) + [k.strip() for k in (_env("API_KEYS") or "").split(",") if k.strip()]
    origins = tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip())
    return ServerConfig(host=args.host, port=args.port, api_keys=tuple(keys), grpc_port=args.grpc_port,
                        shutdown_grace=args.shutdown_grace, allowed_origins=origins)


def build_llm(args: argparse.Namespace):
    from .engine.llm import LLM
    from .models import load_model

    loaded = load_model(model_config(args))
    draft = load_model(replace(model_config(args), model=args.draft_model)) if args.draft_model else None
    return LLM(loaded, engine_config(args), draft)


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from .engine.async_engine import AsyncEngine
    from .serving import serve

    return asyncio.run(serve(server_config(args), lambda: AsyncEngine(build_llm(args))))


def cmd_cluster(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .cluster import deploy
    from .serving import say

    if args.grpc_port:
        say("kakeya cluster serves HTTP only; the gRPC edge stays with `kakeya serve`")
    config = deploy.ClusterConfig(replicas=args.replicas, affinity=not args.no_affinity, ray_address=args.ray_address,
                                  threads_per_replica=args.threads_per_replica)
    deploy.connect(config)
    # after Ray's own handler (abort), before the deployments: a SIGTERM while they start stops cleanly
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    deploy.start(model_config(args), engine_config(args), server_config(args), config)
    say(f"serving on http://{args.host}:{args.port} with {args.replicas} replicas")
    stop.wait()
    deploy.stop(config)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .engine.llm import LLM
    from .models import load_model
    from .tokenizer import StopMatcher, StreamingDetokenizer, apply_chat_template

    loaded = load_model(model_config(args))
    info = loaded.info
    print(f"[kakeya] {info.name} on {info.device} ({info.dtype}), loaded in {info.load_seconds:.1f} s", file=sys.stderr)
    draft = load_model(replace(model_config(args), model=args.draft_model)) if args.draft_model else None
    llm = LLM(loaded, engine_config(args), draft)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": args.prompt}]
    prompt_ids = apply_chat_template(llm.tokenizer, messages)
    detok, stops = StreamingDetokenizer(llm.tokenizer), StopMatcher(args.stop)
    first: list[float] = []

    def on_token(token_id: int) -> bool:
        first or first.append(time.perf_counter())
        sys.stdout.write(stops.push(detok.push(token_id)))
        sys.stdout.flush()
        return stops.stopped

    sampling = SamplingParams(args.max_tokens, args.temperature, args.top_k, args.top_p, args.min_p, args.seed)
    t0 = time.perf_counter()
    result = llm.generate(prompt_ids, sampling, on_token=on_token)
    elapsed = time.perf_counter() - t0
    sys.stdout.write(stops.push(detok.flush()) + stops.flush() + "\n")
    n, s = result.usage.completion_tokens, result.spec
    decode_s = elapsed - (first[0] - t0) if first else elapsed
    print(
        f"[kakeya] {n} tokens in {elapsed:.2f} s ({n / elapsed:.1f} tok/s; time to first token "
        f"{(first[0] - t0) * 1000 if first else 0:.0f} ms; decode {max(n - 1, 0) / decode_s if decode_s > 0 else 0:.1f} tok/s), "
        f"prompt {result.usage.prompt_tokens} tokens, finish {result.finish_reason.value}; "
        f"speculation: {s.accepted_tokens}/{s.draft_tokens} drafts accepted, {s.verify_steps} verify steps",
        file=sys.stderr,
    )
    return 0


def cmd_bench(bench_args: Sequence[str]) -> int:
    """The suite lives in the repository (scripts/bench), next to its workloads and results."""
    import runpy

    suite = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "suite.py"
    if not suite.exists():
        print(f"kakeya: error: {suite} not found; `kakeya bench` runs from a source checkout", file=sys.stderr)
        return 2
    argv, sys.argv = sys.argv, [str(suite), *bench_args]
    try:
        runpy.run_path(str(suite), run_name="__main__")
    finally:
        sys.argv = argv
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return {"generate": cmd_generate, "serve": cmd_serve, "cluster": cmd_cluster}[args.command](args)
    except EngineError as e:
        print(f"kakeya: error: {e.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
