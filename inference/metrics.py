"""Prometheus metrics under vLLM's names, so existing vLLM dashboards and KEDA rules work unchanged.

Names (all labelled with `model_name`, as in vLLM):
  vllm:num_requests_running / vllm:num_requests_waiting   gauges, read from the engine at scrape
  vllm:time_to_first_token_seconds                        histogram
  vllm:inter_token_latency_seconds                        histogram (one sample per token after the first)
  vllm:e2e_request_latency_seconds                        histogram
  vllm:prompt_tokens_total / vllm:generation_tokens_total counters
  vllm:request_success_total{finished_reason}             counter (stop | length | abort)
  vllm:kv_cache_usage_perc                                gauge 0..1: share of the KV block pool in use
  vllm:num_preemptions_total                              counter: sequences preempted for KV memory
  vllm:prefix_cache_queries_total / _hits_total           counters, in prompt tokens
                                                          (these four read at scrape from an engine
                                                          with a paged KV cache; absent otherwise)
  inferforge:requests_rejected_total{reason}              counter (queue_full | draining | invalid | ...)
  inferforge:request_ignored_fields_total{field}          counter: unknown request fields accepted and
                                                          ignored, by name (at most MAX_FIELD_LABELS
                                                          distinct names, then "other")

Each app gets its own registry (no global state), so several apps can live in one test process.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from .engine_api import AsyncEngine

# vLLM's buckets, extended downwards because CPU test models decode in milliseconds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
               1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
               50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Ignored-field names come from clients: the label set is bounded so a client cannot grow the
# exposition without limit (each new label value is a new time series).
MAX_FIELD_LABELS = 64
_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
_FIELD_LABEL = re.compile(rf"{_NAME}((\[\])?\.{_NAME}){{0,3}}")  # e.g. top_k, messages[].vendor_note

# The `*_created` timestamp series double the exposition size and no vLLM dashboard reads them
# (vLLM turns them off the same way).
disable_created_metrics()


class ServerMetrics:
    """All metrics of one server; `render()` is the /metrics body."""

    def __init__(self, engine: AsyncEngine, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        running = Gauge("vllm:num_requests_running", "Requests in the running batch.", labels,
                        registry=self.registry)
        waiting = Gauge("vllm:num_requests_waiting", "Requests waiting for a batch slot.", labels,
                        registry=self.registry)
        # Read at scrape time: the engine owns these numbers, copying them per step would cost more.
        running.labels(model_name).set_function(lambda: engine.num_running)
        waiting.labels(model_name).set_function(lambda: engine.num_waiting)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", labels,
                              buckets=TTFT_BUCKETS, registry=self.registry).labels(model_name)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Time between consecutive tokens.",
                             labels, buckets=ITL_BUCKETS, registry=self.registry).labels(model_name)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.", labels,
                             buckets=E2E_BUCKETS, registry=self.registry).labels(model_name)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens processed.", labels,
                                     registry=self.registry).labels(model_name)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.", labels,
                                         registry=self.registry).labels(model_name)
        self._success = Counter("vllm:request_success", "Finished requests by finish reason.",
                                [*labels, "finished_reason"], registry=self.registry)
        self._rejected = Counter("inferforge:requests_rejected", "Requests refused before generation.",
                                 [*labels, "reason"], registry=self.registry)
        self._ignored = Counter("inferforge:request_ignored_fields",
                                "Unknown request fields accepted and ignored, by field name.",
                                [*labels, "field"], registry=self.registry)
        self._ignored_labels: set[str] = set()
        self._model_name = model_name
        if hasattr(engine, "kv_cache_usage"):
            self.registry.register(_KVCacheCollector(engine, model_name))

    def request_finished(self, finish_reason: str) -> None:
        """Count one finished request."""
        self._success.labels(self._model_name, finish_reason).inc()

    def request_rejected(self, reason: str) -> None:
        """Count one request refused before it reached the engine (or at admission)."""
        self._rejected.labels(self._model_name, reason).inc()

    def field_ignored(self, name: str) -> None:
        """Count one unknown request field that was ignored (the label is "other" past the bound)."""
        label = name if _FIELD_LABEL.fullmatch(name) else "other"
        if label not in self._ignored_labels:
            if len(self._ignored_labels) >= MAX_FIELD_LABELS:
                label = "other"
            self._ignored_labels.add(label)
        self._ignored.labels(self._model_name, label).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _KVCacheCollector(Collector):
    """vLLM's KV cache metrics, read from the engine at scrape time (the engine owns the counts)."""

    def __init__(self, engine: object, model_name: str) -> None:
        self._engine = engine
        self._model_name = model_name

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        engine, labels = self._engine, ["model_name"]
        usage = GaugeMetricFamily("vllm:kv_cache_usage_perc", "KV cache usage (1 = every block in use).",
                                  labels=labels)
        usage.add_metric([self._model_name], engine.kv_cache_usage)  # type: ignore[attr-defined]
        yield usage
        for name, doc, value in (
                ("vllm:num_preemptions", "Sequences preempted (recomputed later) for KV memory.",
                 engine.num_preemptions),  # type: ignore[attr-defined]
                ("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                 engine.prefix_cache_query_tokens),  # type: ignore[attr-defined]
                ("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                 engine.prefix_cache_hit_tokens)):  # type: ignore[attr-defined]
            counter = CounterMetricFamily(name, doc, labels=labels)
            counter.add_metric([self._model_name], value)
            yield counter


class RequestTimer:
    """Per-request latency bookkeeping: TTFT, inter-token latency and end-to-end latency."""

    __slots__ = ("_metrics", "start", "first_token_at", "_last_token_at")

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        self.start = time.perf_counter()
        self.first_token_at: float | None = None
        self._last_token_at: float | None = None

    def token(self) -> None:
        """Record the arrival of one generated token."""
        now = time.perf_counter()
        if self._last_token_at is None:
            self.first_token_at = now
            self._metrics.ttft.observe(now - self.start)
        else:
            self._metrics.itl.observe(now - self._last_token_at)
        self._last_token_at = now

    def finish(self, record: bool = True) -> float:
        """The end-to-end latency in seconds, observed in the histogram when `record`."""
        elapsed = time.perf_counter() - self.start
        if record:
            self._metrics.e2e.observe(elapsed)
        return elapsed

    @property
    def ttft_s(self) -> float | None:
        """Seconds to the first token, or None if none arrived."""
        return None if self.first_token_at is None else self.first_token_at - self.start
