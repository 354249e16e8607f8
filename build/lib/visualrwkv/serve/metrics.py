"""`GET /metrics` (the Prometheus text format, via prometheus_client) and the access log.

Counted per app, in its own registry (two servers in one process never mix their numbers):
requests by route and status, prompt / completion / cached tokens, end-to-end latency and time to
the first token as histograms; read from the engine when scraped: running rows, queue depth,
completed requests, decode steps, prefix-cache hits, misses, entries and bytes. Every generation
request also writes one access-log line (logger "visualrwkv.access"): route, status, tokens, latency.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

ACCESS_LOG = logging.getLogger("visualrwkv.access")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, float("inf"))


class _EngineCollector:
    """The engine's own counters and gauges, read at scrape time."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        stats = self.engine.stats()
        for name, value, text in (("running", stats.running, "rows in the decode batch"),
                                  ("waiting", stats.waiting, "requests queued, not yet prefilled (queue depth)"),
                                  ("cache_entries", stats.cache.entries, "prefix-state cache entries"),
                                  ("cache_bytes", stats.cache.bytes, "prefix-state cache size in bytes")):
            yield GaugeMetricFamily(f"visualrwkv_{name}", text, value=value)
        for name, value, text in (("completed", stats.completed, "requests finished by the engine"),
                                  ("decode_steps", stats.decode_steps, "batched decode steps"),
                                  ("cache_hits", stats.cache.hits, "prefix-state cache hits"),
                                  ("cache_misses", stats.cache.misses, "prefix-state cache misses")):
            yield CounterMetricFamily(f"visualrwkv_{name}", text, value=value)


class Metrics:
    def __init__(self, engine):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("visualrwkv_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("visualrwkv_prompt_tokens", "prompt positions (text tokens plus image "
                                     "vectors)", registry=r)
        self.completion_tokens = Counter("visualrwkv_completion_tokens", "generated tokens", registry=r)
        self.cached_tokens = Counter("visualrwkv_cached_prompt_tokens", "prompt positions resumed from the "
                                     "prefix cache", registry=r)
        self.latency = Histogram("visualrwkv_request_latency_seconds", "request start to its last token",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("visualrwkv_time_to_first_token_seconds", "request start to its first token",
                                     ["route"], buckets=LATENCY_BUCKETS, registry=r)
        r.register(_EngineCollector(engine))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def failed(self, route: str, status: int, message: str) -> None:
        self.requests.labels(route, str(status)).inc()
        ACCESS_LOG.info("%s %d error=%r", route, status, message)

    def finished(self, route: str, start: float, first_token: float | None, result) -> None:
        """A generation request done: its counts, latency and its access-log line."""
        elapsed = time.perf_counter() - start
        self.requests.labels(route, "200").inc()
        self.prompt_tokens.inc(result.prompt_tokens)
        self.completion_tokens.inc(result.completion_tokens)
        self.cached_tokens.inc(result.cached_tokens)
        self.latency.labels(route).observe(elapsed)
        if first_token is not None:
            self.first_token.labels(route).observe(first_token - start)
        ACCESS_LOG.info("%s 200 prompt_tokens=%d cached_tokens=%d completion_tokens=%d finish=%s latency=%.3fs",
                        route, result.prompt_tokens, result.cached_tokens, result.completion_tokens,
                        result.finish_reason, elapsed)
