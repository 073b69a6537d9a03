"""`kakeya cluster` on this machine: M concurrent multi-turn sessions through the HTTP ingress on
1 replica (all threads) vs 2 replicas (the threads split between them), and what a session
handoff costs (the turn that re-prefills a session's history on a replica without its KV,
against the cached turns before and after it), side by side in one run.

SmolLM2-135M-Instruct (the default model), greedy, `ignore_eos`, real uvicorn ingress on
127.0.0.1, sessions named with X-Session-Id. A handoff is forced by telling the directory that
the session's owner left (what a scale-down does), so routing stays as it was.

    .venv/bin/python scripts/bench/cluster.py [--sessions 4] [--turns 4] [--max-tokens 32]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import ray
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, write_result  # noqa: E402

from inference_engine.cluster import deploy  # noqa: E402
from inference_engine.config import EngineConfig, ModelConfig, ServerConfig  # noqa: E402

TOPICS = ["tides", "glaciers", "lighthouses", "beekeeping", "volcanoes", "printing presses", "comets", "canals"]


def _turn(url: str, sid: str, messages: list, max_tokens: int) -> tuple[float, int, int, str]:
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/chat/completions", headers={"x-session-id": sid}, timeout=600, json={
        "messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})
    r.raise_for_status()
    body = r.json()
    messages += [{"role": "assistant", "content": body["choices"][0]["message"]["content"]},
                 {"role": "user", "content": "Go on, with one more detail."}]
    return (time.perf_counter() - t0, body["usage"]["completion_tokens"],
            body["usage"]["prompt_tokens_details"]["cached_tokens"], r.headers["x-kakeya-replica"])


def _conversation(i: int) -> list:
    return [{"role": "system", "content": "You are a knowledgeable guide who answers in plain prose."},
            {"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]}."}]


def workload(url: str, sessions: int, turns: int, max_tokens: int, tag: str) -> dict:
    latencies, tokens, errors = [], [], []

    def run(i: int) -> None:
        messages = _conversation(i)
        for _ in range(turns):
            try:
                dt, n, _, _ = _turn(url, f"{tag}-{i}", messages, max_tokens)
                latencies.append(dt)
                tokens.append(n)
            except httpx.HTTPError as e:
                errors.append(repr(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {"aggregate_tok_s": sum(tokens) / wall, "wall_s": wall, "turns": len(lat), "errors": errors,
            "turn_latency_p50_s": statistics.median(lat), "turn_latency_p90_s": lat[int(0.9 * (len(lat) - 1))]}


def session_turns(url: str) -> dict:
    """The ingress's routing counters: session turns by new / owner / handoff, and the affinity
    hit rate owner ÷ (owner + handoff). Cumulative over the run: the directory outlives the deploys."""
    time.sleep(2.5)  # replicas report every second, the ingress refreshes as often
    turns = {s.labels["outcome"]: s.value for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)
             if f.name == "kakeya_cluster_session_turns" for s in f.samples if s.name.endswith("_total")}
    turns["affinity_hit_rate"] = turns.get("owner", 0) / max(turns.get("owner", 0) + turns.get("handoff", 0), 1)
    return turns


def handoff_cost(url: str, sessions: int, max_tokens: int, turns_before: int) -> dict:
    directory = ray.get_actor(deploy.DIRECTORY, namespace=deploy.NAMESPACE)
    cached, handoff, after, history = [], [], [], []
    for i in range(sessions):
        sid, messages = f"handoff-{i}", _conversation(i)
        for _ in range(turns_before):
            dt, _, _, replica = _turn(url, sid, messages, max_tokens)
        cached.append(dt)
        ray.get(directory.leave.remote(replica))  # as a scale-down does: the session is free to move
        dt, _, hit, _ = _turn(url, sid, messages, max_tokens)
        assert hit == 0, "a handoff turn must prefill the history again"
        handoff.append(dt)
        history.append(len(messages))
        dt, _, hit, _ = _turn(url, sid, messages, max_tokens)
        assert hit > 0
        after.append(dt)
    return {"cached_turn_s": statistics.median(cached), "handoff_turn_s": statistics.median(handoff),
            "cached_turn_after_s": statistics.median(after),
            "handoff_over_cached": statistics.median(handoff) / statistics.median(cached)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in all, split between replicas")
    args = ap.parse_args()
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False, namespace=deploy.NAMESPACE)
    model, engine = ModelConfig(device="cpu", dtype="float32"), EngineConfig()
    server = ServerConfig(port=8765)
    url = f"http://127.0.0.1:{server.port}"
    rows = []
    try:
        for replicas in (1, 2):
            cluster = deploy.ClusterConfig(replicas=replicas, threads_per_replica=max(1, args.threads // replicas))
            deploy.start(model, engine, server, cluster)
            workload(url, 1, 1, 4, f"warm{replicas}")  # first requests pay lazy start-up work
            row = {"replicas": replicas, "threads_per_replica": cluster.threads_per_replica,
                   **workload(url, args.sessions, args.turns, args.max_tokens, f"r{replicas}")}
            row["session_turns"] = session_turns(url)
            if replicas == 2:
                row["handoff"] = handoff_cost(url, args.sessions, args.max_tokens, args.turns)
            rows.append(row)
            serve.delete(cluster.app_name)
    finally:
        serve.shutdown()
        ray.shutdown()
    res = {"env": environment(), "sessions": args.sessions, "turns": args.turns, "max_tokens": args.max_tokens,
           "rows": rows, "two_over_one": rows[1]["aggregate_tok_s"] / rows[0]["aggregate_tok_s"]}
    path = write_result("cluster", res)
    print("| replicas × threads | aggregate tok/s | turn p50 (s) | turn p90 (s) | affinity hit rate | errors |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['replicas']} × {r['threads_per_replica']} | {r['aggregate_tok_s']:.1f} | {r['turn_latency_p50_s']:.2f} "
              f"| {r['turn_latency_p90_s']:.2f} | {r['session_turns']['affinity_hit_rate']:.2f} | {len(r['errors'])} |")
    h = rows[1]["handoff"]
    print(f"\nhandoff turn {h['handoff_turn_s']:.2f} s vs cached turn {h['cached_turn_s']:.2f} s "
          f"({h['handoff_over_cached']:.2f}×), cached again after: {h['cached_turn_after_s']:.2f} s\nwrote {path}")


if __name__ == "__main__":
    main()
