"""Human-readable tables and JSON result files."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..bench.metrics import LATENCY_FAMILIES, BenchmarkMetrics, percentile_label

RESULT_SCHEMA_VERSION = 1


def machine_info() -> dict[str, Any]:
    """Where the numbers were taken: they mean nothing without it."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": _cpu_model() or platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        # Other work on a shared machine skews every figure; the 1/5/15-minute load says how much.
        "loadavg_1_5_15m": list(os.getloadavg()),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # the HTTP-only path does not need torch
        pass
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def utc_now() -> str:
    """ISO-8601 UTC timestamp for the result file."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def result_document(kind: str, config: Mapping[str, Any], **sections: Any) -> dict[str, Any]:
    """The top-level JSON shape shared by every subcommand."""
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "benchmark": kind,
        "date": utc_now(),
        "machine": machine_info(),
        "config": dict(config),
        **sections,
    }


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write the result file, creating its directory; NaN/inf are not valid JSON and are refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_metrics_table(title: str, metrics: BenchmarkMetrics, percentiles: Sequence[float]) -> str:
    """The `vllm bench serve` style summary block."""
    width = 50
    rows: list[str] = [f"{' ' + title + ' ':=^{width}}"]

    def row(label: str, value: str) -> None:
        rows.append(f"{label:<40}{value:>10}")

    row("Successful requests:", str(metrics.completed))
    row("Failed requests:", str(metrics.failed))
    row("Output length mismatches:", str(metrics.output_len_mismatches))
    row("Benchmark duration (s):", _fmt(metrics.duration_s))
    row("Total input tokens:", str(metrics.total_input_tokens))
    row("Total generated tokens:", str(metrics.total_output_tokens))
    row("Request throughput (req/s):", _fmt(metrics.request_throughput))
    row("Output token throughput (tok/s):", _fmt(metrics.output_throughput))
    row("Total token throughput (tok/s):", _fmt(metrics.total_token_throughput))
    for name, heading in LATENCY_FAMILIES:
        stats = metrics.latencies[name]
        rows.append(f"{heading:-^{width}}")
        upper = name.upper()
        row(f"Mean {upper} (ms):", _fmt(stats.mean_ms))
        row(f"Median {upper} (ms):", _fmt(stats.median_ms))
        for q in percentiles:
            row(f"{percentile_label(q).upper()} {upper} (ms):", _fmt(stats.percentiles_ms.get(q)))
    rows.append("=" * width)
    if metrics.errors:
        distinct = sorted(set(metrics.errors))
        rows.append(f"Errors ({len(metrics.errors)}, {len(distinct)} distinct), first: {distinct[0]}")
    return "\n".join(rows)


def format_side_by_side(
    columns: Mapping[str, Mapping[str, float | None]],
    rows: Sequence[tuple[str, str]],
) -> str:
    """A table with one column per system; `rows` are (key, label) pairs into each column."""
    names = list(columns)
    widths = [max(12, len(n) + 2) for n in names]
    label_width = max(len(label) for _, label in rows) + 2
    lines = [f"{'':<{label_width}}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True))]
    for key, label in rows:
        cells = "".join(f"{_fmt(columns[n].get(key)):>{w}}" for n, w in zip(names, widths, strict=True))
        lines.append(f"{label:<{label_width}}{cells}")
    return "\n".join(lines)
