"""Benchmark arithmetic: per-request timings in, vLLM-style aggregate metrics out.

Definitions (CONVENTIONS.md section 6, the same as `vllm bench serve`):

- TTFT: request sent -> first streamed token received.
- TPOT: (end-to-end latency - TTFT) / (output tokens - 1); undefined for single-token outputs,
  which therefore contribute no TPOT sample (vLLM does the same).
- ITL: gap between consecutive streamed chunks of one request, pooled over all requests (so a
  request with more tokens weighs more, as in vLLM).
- E2E latency: request sent -> last byte of the response.
- Throughputs divide by the wall-clock duration of the whole run and count successful requests
  only.

JSON keys reuse vLLM's (`mean_ttft_ms`, `p99_itl_ms`, `output_throughput`, ...) so existing
tooling that reads vLLM result files reads ours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)

# The latency families reported, in table order, with their display titles.
LATENCY_FAMILIES: tuple[tuple[str, str], ...] = (
    ("ttft", "Time to First Token"),
    ("tpot", "Time per Output Token (excl. 1st token)"),
    ("itl", "Inter-token Latency"),
    ("e2el", "End-to-end Latency"),
)


@dataclass
class RequestResult:
    """What one benchmark request measured (all times in seconds)."""

    success: bool
    prompt_len: int
    """Prompt tokens: the server's `usage.prompt_tokens` when reported, else what was sent."""
    expected_output_len: int
    """The `max_tokens` asked for; with ignore-eos the server must return exactly this many."""
    output_len: int = 0
    """Completion tokens: the server's `usage.completion_tokens`, else the streamed chunk count."""
    ttft_s: float = 0.0
    latency_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    start_offset_s: float = 0.0
    """When the request was sent, relative to the start of the run."""
    error: str = ""

    @property
    def tpot_s(self) -> float | None:
        """(latency - TTFT) / (output tokens - 1), or None when it is undefined."""
        return time_per_output_token(self.latency_s, self.ttft_s, self.output_len)


def time_per_output_token(latency_s: float, ttft_s: float, output_len: int) -> float | None:
    """TPOT of one request; None for failed or single-token outputs (no decode interval exists)."""
    if output_len <= 1:
        return None
    return (latency_s - ttft_s) / (output_len - 1)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation (numpy's default, as vLLM uses); None if empty."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass(frozen=True)
class LatencyStats:
    """Mean, median, standard deviation and chosen percentiles of one latency family, in ms."""

    count: int
    mean_ms: float | None
    median_ms: float | None
    std_ms: float | None
    percentiles_ms: dict[float, float | None]

    @classmethod
    def from_seconds(cls, values_s: Sequence[float], percentiles: Sequence[float]) -> LatencyStats:
        """Summarise samples given in seconds; every statistic is None when there are none."""
        values_ms = np.asarray(values_s, dtype=np.float64) * 1000.0
        if values_ms.size == 0:
            return cls(0, None, None, None, {q: None for q in percentiles})
        return cls(
            count=int(values_ms.size),
            mean_ms=float(values_ms.mean()),
            median_ms=float(np.median(values_ms)),
            std_ms=float(values_ms.std()),
            percentiles_ms={q: percentile(values_ms, q) for q in percentiles},
        )


def percentile_label(q: float) -> str:
    """`p50`, `p99`, `p99.9`: the key fragment vLLM uses for a percentile."""
    return f"p{int(q)}" if float(q).is_integer() else f"p{q:g}"


@dataclass(frozen=True)
class BenchmarkMetrics:
    """Aggregates of one run."""

    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    """Successful requests per second."""
    output_throughput: float
    """Generated tokens per second."""
    total_token_throughput: float
    """(Prompt + generated) tokens per second."""
    output_len_mismatches: int
    """Successful requests whose output length differs from the `max_tokens` asked for."""
    latencies: dict[str, LatencyStats]
    """ttft, tpot, itl, e2el."""
    errors: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Flat, JSON-ready, with vLLM's key names (`mean_ttft_ms`, `p90_itl_ms`, ...)."""
        out: dict[str, Any] = {
            "completed": self.completed,
            "failed": self.failed,
            "duration": self.duration_s,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.request_throughput,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "output_len_mismatches": self.output_len_mismatches,
        }
        for name, stats in self.latencies.items():
            out[f"mean_{name}_ms"] = stats.mean_ms
            out[f"median_{name}_ms"] = stats.median_ms
            out[f"std_{name}_ms"] = stats.std_ms
            for q, value in stats.percentiles_ms.items():
                out[f"{percentile_label(q)}_{name}_ms"] = value
        out["errors"] = list(self.errors)
        return out


def compute_metrics(
    results: Sequence[RequestResult],
    duration_s: float,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> BenchmarkMetrics:
    """Aggregate per-request results of a run that took `duration_s` seconds of wall clock."""
    if not duration_s > 0 or math.isinf(duration_s):
        raise ValueError(f"duration must be a positive finite number of seconds, got {duration_s}")
    ok = [r for r in results if r.success]
    ttfts = [r.ttft_s for r in ok]
    e2els = [r.latency_s for r in ok]
    tpots = [t for r in ok if (t := r.tpot_s) is not None]
    itls = [gap for r in ok for gap in r.itl_s]
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_len for r in ok)
    return BenchmarkMetrics(
        completed=len(ok),
        failed=len(results) - len(ok),
        duration_s=duration_s,
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=len(ok) / duration_s,
        output_throughput=total_out / duration_s,
        total_token_throughput=(total_in + total_out) / duration_s,
        output_len_mismatches=sum(1 for r in ok if r.output_len != r.expected_output_len),
        latencies={
            "ttft": LatencyStats.from_seconds(ttfts, percentiles),
            "tpot": LatencyStats.from_seconds(tpots, percentiles),
            "itl": LatencyStats.from_seconds(itls, percentiles),
            "e2el": LatencyStats.from_seconds(e2els, percentiles),
        },
        errors=[r.error for r in results if not r.success],
    )
