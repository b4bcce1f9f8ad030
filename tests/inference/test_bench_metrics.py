"""Benchmark arithmetic on synthetic timings: percentiles, TPOT, ITL, throughput, JSON keys."""

from __future__ import annotations

import math

import pytest

from inference.bench.metrics import (
    LatencyStats,
    RequestResult,
    compute_metrics,
    percentile,
    percentile_label,
    time_per_output_token,
)


def ok(
    ttft: float,
    latency: float,
    output_len: int,
    itl: list[float] | None = None,
    prompt_len: int = 32,
    expected: int | None = None,
) -> RequestResult:
    return RequestResult(
        success=True,
        prompt_len=prompt_len,
        expected_output_len=output_len if expected is None else expected,
        output_len=output_len,
        ttft_s=ttft,
        latency_s=latency,
        itl_s=list(itl or []),
    )


def failed(error: str = "HTTP 500: boom") -> RequestResult:
    return RequestResult(success=False, prompt_len=32, expected_output_len=64, error=error)


# ---- percentiles ----------------------------------------------------------------------------------


def test_percentiles_interpolate_linearly_between_ranks_like_numpy_and_vllm():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0


def test_percentile_does_not_depend_on_sample_order():
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0


def test_percentile_of_no_samples_is_none_not_zero():
    assert percentile([], 99) is None


@pytest.mark.parametrize("q", [-1.0, 100.5])
def test_percentile_outside_0_to_100_is_refused(q):
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], q)


def test_percentile_labels_match_vllm_keys():
    assert [percentile_label(q) for q in (50.0, 90.0, 99.0, 99.9)] == ["p50", "p90", "p99", "p99.9"]


def test_latency_stats_are_reported_in_milliseconds():
    stats = LatencyStats.from_seconds([0.010, 0.020, 0.030], [50.0])
    assert stats.count == 3
    assert stats.mean_ms == pytest.approx(20.0)
    assert stats.median_ms == pytest.approx(20.0)
    assert stats.percentiles_ms[50.0] == pytest.approx(20.0)
    assert stats.std_ms == pytest.approx(math.sqrt(200 / 3))


# ---- TPOT -----------------------------------------------------------------------------------------


def test_tpot_is_decode_time_over_output_tokens_after_the_first():
    # 5 tokens: the first at 0.2 s, the remaining 4 over the next 0.8 s -> 0.2 s each.
    assert time_per_output_token(latency_s=1.0, ttft_s=0.2, output_len=5) == pytest.approx(0.2)


@pytest.mark.parametrize("output_len", [0, 1])
def test_tpot_is_undefined_for_single_token_and_empty_outputs(output_len):
    assert time_per_output_token(latency_s=1.0, ttft_s=1.0, output_len=output_len) is None


def test_single_token_requests_add_no_tpot_sample_but_still_count_everywhere_else():
    results = [ok(ttft=0.1, latency=0.1, output_len=1), ok(ttft=0.1, latency=0.5, output_len=5)]
    metrics = compute_metrics(results, duration_s=1.0)
    assert metrics.latencies["tpot"].count == 1
    assert metrics.latencies["tpot"].mean_ms == pytest.approx(100.0)
    assert metrics.latencies["ttft"].count == 2
    assert metrics.latencies["e2el"].count == 2
    assert metrics.total_output_tokens == 6


def test_tpot_aggregates_per_request_values_not_pooled_tokens():
    # A long fast request and a short slow one: TPOT is the mean of the two per-request values.
    results = [ok(ttft=0.0, latency=0.9, output_len=10), ok(ttft=0.0, latency=0.9, output_len=2)]
    metrics = compute_metrics(results, duration_s=1.0)
    assert metrics.latencies["tpot"].mean_ms == pytest.approx((100.0 + 900.0) / 2)


# ---- ITL ------------------------------------------------------------------------------------------


def test_itl_pools_every_gap_of_every_request_so_longer_requests_weigh_more():
    results = [
        ok(ttft=0.1, latency=0.4, output_len=4, itl=[0.1, 0.1, 0.1]),
        ok(ttft=0.1, latency=0.5, output_len=2, itl=[0.4]),
    ]
    metrics = compute_metrics(results, duration_s=1.0)
    itl = metrics.latencies["itl"]
    assert itl.count == 4
    assert itl.mean_ms == pytest.approx((100 * 3 + 400) / 4)
    assert itl.median_ms == pytest.approx(100.0)
    # The per-request TPOT view of the same requests differs: (100 + 400) / 2.
    assert metrics.latencies["tpot"].mean_ms == pytest.approx(250.0)


# ---- throughput, failures, mismatches --------------------------------------------------------------


def test_throughputs_divide_successful_tokens_by_wall_clock_duration():
    results = [ok(0.1, 1.0, output_len=64, prompt_len=32) for _ in range(8)] + [failed(), failed()]
    metrics = compute_metrics(results, duration_s=4.0)
    assert metrics.completed == 8
    assert metrics.failed == 2
    assert metrics.total_input_tokens == 8 * 32
    assert metrics.total_output_tokens == 8 * 64
    assert metrics.request_throughput == pytest.approx(2.0)
    assert metrics.output_throughput == pytest.approx(128.0)
    assert metrics.total_token_throughput == pytest.approx(192.0)


def test_failed_requests_are_excluded_from_latencies_and_their_errors_are_kept():
    metrics = compute_metrics([ok(0.1, 0.2, 2, itl=[0.1]), failed("HTTP 429: queue full")], duration_s=1.0)
    assert metrics.latencies["ttft"].count == 1
    assert metrics.errors == ["HTTP 429: queue full"]


def test_all_failed_gives_zero_throughput_and_empty_latencies():
    metrics = compute_metrics([failed(), failed()], duration_s=2.0)
    assert metrics.completed == 0
    assert metrics.output_throughput == 0.0
    assert metrics.latencies["ttft"].mean_ms is None
    assert metrics.to_dict()["p99_ttft_ms"] is None


def test_outputs_shorter_than_max_tokens_are_counted_as_mismatches():
    results = [ok(0.1, 1.0, output_len=64, expected=64), ok(0.1, 1.0, output_len=17, expected=64)]
    assert compute_metrics(results, duration_s=1.0).output_len_mismatches == 1


@pytest.mark.parametrize("duration", [0.0, -1.0, math.inf, math.nan])
def test_duration_must_be_positive_and_finite(duration):
    with pytest.raises(ValueError, match="duration"):
        compute_metrics([ok(0.1, 1.0, 2)], duration_s=duration)


# ---- JSON keys ------------------------------------------------------------------------------------


def test_metrics_dict_uses_vllm_key_names_for_every_family_and_percentile():
    metrics = compute_metrics([ok(0.1, 0.5, 3, itl=[0.2, 0.2])], duration_s=1.0, percentiles=[50, 90, 99])
    out = metrics.to_dict()
    for family in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p50", "p90", "p99"):
            assert f"{stat}_{family}_ms" in out
    for key in (
        "completed",
        "failed",
        "duration",
        "total_input_tokens",
        "total_output_tokens",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "output_len_mismatches",
        "errors",
    ):
        assert key in out
    assert out["mean_ttft_ms"] == pytest.approx(100.0)
    assert out["median_tpot_ms"] == pytest.approx(200.0)
    assert out["mean_e2el_ms"] == pytest.approx(500.0)
