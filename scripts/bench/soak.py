"""Soak: N concurrent streaming clients against a real `kakeya serve` for a fixed time.

Starts `kakeya serve` itself on 127.0.0.1 (a free port, gRPC off), waits for /healthz, then runs
`--clients` loops of streaming chat completions (varied prompts, `--max-tokens` each) until
`--duration` seconds have passed. Reports errors (count and kinds), requests, TTFT and total
latency percentiles, overall tokens/s, and the server's RSS (children included) after the first
request, at the middle and at the end, with the drift end vs start. Then stops the server with
SIGTERM (SIGKILL after `--stop-timeout`) and records its exit code. Exit status 1 when any
request failed or the server did not exit cleanly.

    .venv/bin/python scripts/bench/soak.py --clients 4 --duration 600 --max-tokens 64 \\
        --out scripts/bench/results/soak.json
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"  # traffic goes to this machine only

TOPICS = [
    "a lighthouse keeper", "how bicycles stay upright", "the water cycle", "a good cup of tea",
    "a first job interview", "why the sky is blue", "an autumn forest walk", "how bees make honey",
    "the history of maps", "learning to swim", "a city at night", "how a compiler works",
]
ASKS = ["Write a short story about {}.", "Explain {} in three sentences.", "Give five facts about {}.",
        "Describe {} to a child.", "Write a haiku about {}."]


def prompt(i: int) -> list[dict]:
    """Request i's messages: topic × ask × a counter, so no two requests in a row are the same."""
    text = ASKS[i % len(ASKS)].format(TOPICS[(i // len(ASKS)) % len(TOPICS)])
    return [{"role": "user", "content": f"{text} (#{i})"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def percentiles(values: list[float]) -> dict:
    """Nearest-rank p50/p90/p99 in milliseconds (None when there are no values)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    s = sorted(values)
    pick = lambda q: s[max(0, math.ceil(q * len(s)) - 1)]  # noqa: E731
    return {f"p{int(q * 100)}": round(pick(q) * 1000, 1) for q in (0.5, 0.9, 0.99)}


def rss_bytes(proc: psutil.Process) -> int:
    """Resident memory of the server and every process under it (tokenizer/compile workers)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


CACHE_GAUGES = ("kakeya_suffix_index_tokens", "kakeya_session_cache_bytes", "kakeya_num_sessions")


async def cache_gauges(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """The bounded caches' sizes from the server's /metrics: what RSS growth should follow."""
    try:
        text = (await client.get(url + "/metrics", timeout=5)).text
    except httpx.HTTPError:
        return {}
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.split(" ", 1)[0] in CACHE_GAUGES}


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class Stats:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.total: list[float] = []
        self.tokens = 0
        self.ok = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.first_done = asyncio.Event()


async def one_request(client: httpx.AsyncClient, i: int, args, stats: Stats) -> None:
    body = {"messages": prompt(i), "max_tokens": args.max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 0.7, "seed": i}
    t0 = time.perf_counter()
    first: Optional[float] = None
    usage, done, error = None, False, None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                try:
                    error = f"HTTP {r.status_code} {r.json()['error']['type']}"
                except (ValueError, KeyError, TypeError):
                    error = f"HTTP {r.status_code}"
            else:
                event = None
                async for line in r.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data = line[5:].strip()
                        if data == "[DONE]":
                            done = True
                        elif event == "error":
                            error = f"in-band {json.loads(data)['error']['type']}"
                        else:
                            chunk = json.loads(data)
                            if first is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                                first = time.perf_counter()
                            usage = chunk.get("usage") or usage
                        event = None
                if error is None and not done:
                    error = "stream ended without [DONE]"
                elif error is None and usage is None:
                    error = "no usage chunk"
    except httpx.HTTPError as e:
        error = type(e).__name__
    end = time.perf_counter()
    if error is not None:
        stats.errors[error] += 1
        return
    stats.ok += 1
    stats.total.append(end - t0)
    if first is not None:
        stats.ttft.append(first - t0)
    stats.tokens += usage["completion_tokens"]
    stats.first_done.set()


async def client_loop(url: str, args, deadline: float, stats: Stats, counter) -> None:
    timeout = httpx.Timeout(args.request_timeout)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        while time.perf_counter() < deadline:
            await one_request(client, next(counter), args, stats)


async def run_load(url: str, proc: psutil.Process, args) -> dict:
    stats = Stats()
    counter = iter(range(10**9))
    rss: dict[str, Optional[int]] = {"first": None, "start": None, "middle": None, "end": None}
    series: list[tuple[float, int]] = []
    caches: list[tuple[float, dict]] = []
    t0 = time.perf_counter()
    deadline = t0 + args.duration
    tasks = [asyncio.create_task(client_loop(url, args, deadline, stats, counter)) for _ in range(args.clients)]

    async def sample() -> None:
        # RSS "start" is taken once the first request has completed (model warm, buffers allocated).
        waiter = asyncio.ensure_future(stats.first_done.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if stats.first_done.is_set():
            rss["first"] = rss_bytes(proc)
        # "start" comes after a warm-up: the prefix cache (16 entries) and allocator pools fill in the
        # first minute; a leak is growth after that, so drift is end vs start ("first" is also reported)
        warm, mid = t0 + args.warmup_fraction * args.duration, t0 + args.duration / 2
        scraper = httpx.AsyncClient()
        while not all(t.done() for t in tasks):
            now = time.perf_counter()
            series.append((round(now - t0, 1), rss_bytes(proc)))
            caches.append((series[-1][0], await cache_gauges(scraper, url)))
            if rss["start"] is None and now >= warm:
                rss["start"] = series[-1][1]
            if rss["middle"] is None and now >= mid:
                rss["middle"] = series[-1][1]
            await asyncio.sleep(min(args.sample_every, max(0.05, deadline - now)) if now < deadline else 0.5)
        await scraper.aclose()

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    await sampler
    rss["end"] = rss_bytes(proc)
    rss["start"] = rss["start"] or rss["first"]
    if rss["middle"] is None:
        rss["middle"] = rss["end"]
    pct = lambda a, b: round((b - a) / a * 100, 2) if a and b else None  # noqa: E731
    drift = pct(rss["start"], rss["end"])
    mib = lambda b: None if b is None else round(b / 2**20, 1)  # noqa: E731
    return {
        "requests": stats.ok + sum(stats.errors.values()), "ok": stats.ok,
        "errors": sum(stats.errors.values()), "error_kinds": dict(stats.errors),
        "wall_s": round(wall, 2), "completion_tokens": stats.tokens, "tokens_per_s": round(stats.tokens / wall, 2),
        "ttft_ms": percentiles(stats.ttft), "total_ms": percentiles(stats.total),
        "rss_mib": {k: mib(v) for k, v in rss.items()}, "rss_drift_pct": drift,
        "rss_drift_from_first_pct": pct(rss["first"], rss["end"]), "rss_drift_second_half_pct": pct(rss["middle"], rss["end"]),
        "warmup_s": round(args.warmup_fraction * args.duration, 1),
        "rss_series_mib": [(t, mib(b)) for t, b in series],
        "cache_series": caches,  # the bounded caches' gauges at each RSS sample
    }


def start_server(args, port: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "inference_engine", "serve", "--host", HOST, "--port", str(port), "--grpc-port", "0"]
    if args.model:
        cmd += ["--model", args.model]
    cmd += args.serve_arg
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with code {server.returncode} before it was healthy")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not healthy after {timeout:.0f} s")


def stop_server(server: subprocess.Popen, timeout: float) -> dict:
    t0 = time.perf_counter()
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        code, killed = server.wait(timeout=timeout), False
    except subprocess.TimeoutExpired:
        server.kill()
        code, killed = server.wait(timeout=30), True
    return {"exit_code": code, "killed_after_timeout": killed, "stop_s": round(time.perf_counter() - t0, 2)}


def markdown(r: dict) -> str:
    s = r["summary"]
    kinds = ", ".join(f"{k}: {v}" for k, v in s["error_kinds"].items()) or "none"
    rows = [
        ("clients × duration", f"{r['args']['clients']} × {r['args']['duration']} s (max_tokens {r['args']['max_tokens']})"),
        ("requests (ok / errors)", f"{s['requests']} ({s['ok']} / {s['errors']})"),
        ("error kinds", kinds),
        ("TTFT p50 / p90 / p99 ms", " / ".join(str(s["ttft_ms"][p]) for p in ("p50", "p90", "p99"))),
        ("total p50 / p90 / p99 ms", " / ".join(str(s["total_ms"][p]) for p in ("p50", "p90", "p99"))),
        ("tokens/s overall", f"{s['tokens_per_s']} ({s['completion_tokens']} tokens in {s['wall_s']} s)"),
        ("server RSS after 1st request / after warm-up / middle / end MiB",
         " / ".join(str(s["rss_mib"][k]) for k in ("first", "start", "middle", "end"))),
        (f"RSS drift end vs after warm-up ({s['warmup_s']} s)", f"{s['rss_drift_pct']} %"),
        ("RSS drift end vs middle / vs 1st request",
         f"{s['rss_drift_second_half_pct']} % / {s['rss_drift_from_first_pct']} %"),
        ("server exit code", f"{r['server']['exit_code']}" + (" (SIGKILL after timeout)" if r["server"]["killed_after_timeout"] else "")),
    ]
    return "\n".join(["| soak | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=600, help="seconds of load")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model", default=None, help="as `kakeya serve --model`; default the embedded SmolLM2")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `kakeya serve` argument (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "scripts/bench/results/soak.json"))
    ap.add_argument("--warmup-fraction", type=float, default=0.1,
                    help="share of the duration before the RSS 'start' sample (caches fill first)")
    ap.add_argument("--startup-timeout", type=float, default=600, help="seconds to wait for /healthz")
    ap.add_argument("--request-timeout", type=float, default=120)
    ap.add_argument("--stop-timeout", type=float, default=30, help="seconds after SIGTERM before SIGKILL")
    ap.add_argument("--sample-every", type=float, default=5, help="seconds between RSS samples")
    args = ap.parse_args(argv)

    port = free_port()
    url = f"http://{HOST}:{port}"
    log = tempfile.NamedTemporaryFile("w+", prefix="kakeya-soak-", suffix=".log", delete=False)
    server = start_server(args, port, log)
    result: dict = {"benchmark": "soak", "command": "python scripts/bench/soak.py " + " ".join(sys.argv[1:] if argv is None else argv),
                    "args": vars(args), "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "server_log": log.name}
    try:
        result["startup_s"] = round(wait_healthy(url, server, args.startup_timeout), 1)
        result["model"] = httpx.get(url + "/healthz", timeout=5).json().get("model")
        print(f"[soak] {result['model']} healthy after {result['startup_s']} s on {url}; "
              f"{args.clients} clients for {args.duration:.0f} s", file=sys.stderr, flush=True)
        result["summary"] = asyncio.run(run_load(url, psutil.Process(server.pid), args))
    except BaseException as e:
        result["failure"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        result["server"] = stop_server(server, args.stop_timeout)
        log.flush()
        if "summary" in result:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            print(markdown(result))
            print(f"wrote {out}; server log {log.name}", file=sys.stderr)
        else:
            log.seek(0)
            print(f"[soak] failed: {result.get('failure')}; server log tail:\n" + log.read()[-3000:], file=sys.stderr)
    clean = result["server"]["exit_code"] == 0 and not result["server"]["killed_after_timeout"]
    return 0 if result["summary"]["errors"] == 0 and clean else 1


if __name__ == "__main__":
    sys.exit(main())
