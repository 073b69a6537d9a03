"""Prometheus metrics: the only importer of prometheus_client. Observes StepStats and
per-request timings; names follow vLLM's with a `kakeya_` prefix (PromQL in docs/metrics.md)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from .types import StepStats, Timings

# Observed by the HTTP edge per request; in a cluster the ingress's, never a replica's.
INGRESS_FAMILIES = frozenset({"kakeya_requests", "kakeya_prompt_tokens", "kakeya_generation_tokens",
                              "kakeya_time_to_first_token_seconds", "kakeya_inter_token_latency_seconds",
                              "kakeya_e2e_request_latency_seconds", "kakeya_request_queue_time_seconds",
                              "kakeya_request_prefill_time_seconds", "kakeya_request_decode_time_seconds",
                              "kakeya_prefix_cache_queries", "kakeya_prefix_cache_hits"})
# Memory accounting (docs/metrics.md, "Bytes per token"): engine families, per replica in a cluster
MEMORY_GAUGES = {
    "kakeya_kv_bytes_per_cached_token": "Held session/prefix KV bytes (spare capacity included) per cached position",
    "kakeya_suffix_index_tokens": "Tokens indexed for suffix drafting (bounded by --suffix-cache-tokens per API key)",
}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, running: Callable[[], int], waiting: Callable[[], int],
                 sessions: Callable[[], int] = lambda: 0, cache_bytes: Callable[[], int] = lambda: 0,
                 cache_usage: Callable[[], float] = lambda: 0.0, memory: Optional[dict[str, Callable[[], float]]] = None,
                 replicas: Optional[Callable[[], tuple[dict[str, bytes], dict[str, int]]]] = None):
        self.registry = r = CollectorRegistry()  # one per app: no global state between servers/tests
        self.requests = Counter("kakeya_requests", "Finished HTTP requests", ["endpoint", "status", "finish_reason"], registry=r)
        self.prompt_tokens = Counter("kakeya_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("kakeya_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("kakeya_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("kakeya_inter_token_latency_seconds", "Time between streamed tokens", buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("kakeya_e2e_request_latency_seconds", "End-to-end request latency", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("kakeya_request_queue_time_seconds", "Time a request waited for a running slot",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.prefill_time = Histogram("kakeya_request_prefill_time_seconds", "Scheduled to first token (prefill)",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.decode_time = Histogram("kakeya_request_decode_time_seconds", "First token to the last (decode)",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.prefix_queries = Counter("kakeya_prefix_cache_queries", "Prompt tokens looked up in the session / prefix cache",
                                      registry=r)
        self.prefix_hits = Counter("kakeya_prefix_cache_hits", "Prompt tokens found there (their KV reused)", registry=r)
        if replicas is None:
            self._engine_metrics(r, running, waiting, sessions, cache_bytes, cache_usage)
            for name, fn in (memory or {}).items():
                Gauge(name, MEMORY_GAUGES[name], registry=r).set_function(fn)
        else:  # a cluster's ingress: the engine metrics are each replica's, labelled with its id
            r.register(_ReplicaCollector(replicas))

    def _engine_metrics(self, r: CollectorRegistry, running, waiting, sessions, cache_bytes, cache_usage) -> None:
        Gauge("kakeya_num_requests_running", "Requests decoding now", registry=r).set_function(running)
        Gauge("kakeya_num_requests_waiting", "Requests queued", registry=r).set_function(waiting)
        Gauge("kakeya_num_sessions", "Open client sessions", registry=r).set_function(sessions)
        Gauge("kakeya_session_cache_bytes", "KV bytes held by sessions and the prefix cache", registry=r).set_function(cache_bytes)
        Gauge("kakeya_kv_cache_usage_perc", "Session / prefix cache bytes as a fraction of --session-cache-bytes (0-1)",
              registry=r).set_function(cache_usage)
        self.forwards = Counter("kakeya_model_forwards", "Verifier model calls (decoding requests share one)", registry=r)
        self.drafts = Counter("kakeya_spec_decode_num_drafts", "Verify steps that carried drafts", registry=r)
        self.draft_tokens = Counter("kakeya_spec_decode_num_draft_tokens", "Draft tokens proposed", registry=r)
        self.accepted = Counter("kakeya_spec_decode_num_accepted_tokens", "Draft tokens accepted", registry=r)
        self.accepted_per_pos = Counter(
            "kakeya_spec_decode_num_accepted_tokens_per_pos", "Accepted draft tokens by draft position", ["position"], registry=r
        )
        self.verify_steps = Counter("kakeya_spec_decode_num_verify_steps", "Verifier forward passes", registry=r)

    def observe_step(self, stats: StepStats) -> None:
        s = stats.spec
        self.drafts.inc(s.drafts)
        self.draft_tokens.inc(s.draft_tokens)
        self.accepted.inc(s.accepted_tokens)
        self.verify_steps.inc(s.verify_steps)
        self.forwards.inc(stats.forwards)
        for pos, n in enumerate(s.accepted_per_pos):
            self.accepted_per_pos.labels(position=str(pos)).inc(n)

    def observe_request(self, endpoint: str, status: int, finish_reason: str, prompt: int, generated: int,
                        ttft: float | None, e2e: float, token_gaps: Sequence[float] = (),
                        timings: Sequence[Timings] = (), prefix: tuple[int, int] = (0, 0)) -> None:
        """`prefix`: (prompt tokens looked up, of them found cached) over the request's choices."""
        self.requests.labels(endpoint=endpoint, status=str(status), finish_reason=finish_reason).inc()
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(generated)
        if ttft is not None:
            self.ttft.observe(ttft)
        self.e2e.observe(e2e)
        for gap in token_gaps:
            self.itl.observe(gap)
        for t in timings:
            self.queue_time.observe(t.queue)
            self.prefill_time.observe(t.prefill)
            self.decode_time.observe(t.decode)
        self.prefix_queries.inc(prefix[0])
        self.prefix_hits.inc(prefix[1])

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ReplicaCollector:
    """The engine families of every live replica (from their last heartbeat, at most a second or
    two old) with a `replica` label, and the session routing figures of the directory."""

    def __init__(self, source: Callable[[], tuple[dict[str, bytes], dict[str, int]]]):
        self.source = source

    def collect(self):
        texts, turns = self.source()
        families: dict[str, Metric] = {}
        for replica, text in sorted(texts.items()):
            for fam in text_string_to_metric_families(text.decode()):
                if fam.name in INGRESS_FAMILIES:  # request-level families are the ingress's own
                    continue
                out = families.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type, fam.unit))
                out.samples.extend(s._replace(labels={**s.labels, "replica": replica}) for s in fam.samples)
        yield from families.values()
        routed = CounterMetricFamily("kakeya_cluster_session_turns", "Session turns by where they landed: new, "
                                     "owner (affinity hit) or handoff (restored on another replica)", labels=["outcome"])
        for outcome, n in sorted(turns.items()):
            routed.add_metric([outcome], n)
        yield routed


def engine_metrics(engine) -> Metrics:
    """The metrics of one AsyncEngine: its gauges read at scrape time; steps and requests observed."""
    return Metrics(lambda: engine.num_running, lambda: engine.num_waiting, lambda: engine.num_sessions,
                   lambda: engine.cache_bytes, lambda: engine.cache_usage, memory={
                       "kakeya_kv_bytes_per_cached_token": lambda: engine.kv_bytes_per_cached_token,
                       "kakeya_suffix_index_tokens": lambda: engine.suffix_index_tokens})
