"""Result files and tables: the JSON shape every subcommand shares."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from inference.bench.metrics import RequestResult, compute_metrics
from inference.bench.report import (
    RESULT_SCHEMA_VERSION,
    format_metrics_table,
    format_side_by_side,
    result_document,
    write_json,
)


def test_result_document_records_kind_date_machine_and_config_next_to_the_sections(tmp_path: Path):
    path = tmp_path / "nested" / "result.json"
    write_json(path, result_document("serve", {"input_len": 32}, metrics={"completed": 1}))
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == RESULT_SCHEMA_VERSION
    assert doc["benchmark"] == "serve"
    assert doc["date"].endswith("+00:00")
    assert doc["config"] == {"input_len": 32}
    assert doc["metrics"] == {"completed": 1}
    assert doc["machine"]["cpu_count"] >= 1
    assert len(doc["machine"]["loadavg_1_5_15m"]) == 3


def test_nan_is_refused_rather_than_written_as_invalid_json(tmp_path: Path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "bad.json", {"x": math.nan})


def test_table_shows_throughput_and_every_requested_percentile_with_na_for_missing_values():
    ok = RequestResult(True, 32, 1, output_len=1, ttft_s=0.05, latency_s=0.05)
    table = format_metrics_table("T", compute_metrics([ok], 2.0), [50.0, 99.9])
    assert "Output token throughput (tok/s):" in table and "0.50" in table
    assert "P99.9 TTFT (ms):" in table
    # A single-token output has no TPOT and no ITL.
    assert any(line.startswith("Mean TPOT (ms):") and line.endswith("n/a") for line in table.splitlines())


def test_side_by_side_puts_one_column_per_system():
    text = format_side_by_side(
        {"ours": {"output_throughput": 1500.0}, "hf": {"output_throughput": None}},
        [("output_throughput", "output tok/s")],
    )
    header, row = text.splitlines()
    assert header.split() == ["ours", "hf"]
    assert row.split()[-2:] == ["1500.00", "n/a"]
