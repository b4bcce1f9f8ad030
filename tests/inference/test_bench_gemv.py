"""`python -m inference.bench.gemv` prints both products' times per shape and row count, and refuses bad arguments."""

from __future__ import annotations

import json

import pytest

from inference.bench import gemv


def test_prints_both_timings_per_shape_and_rows(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--shape", "96x64", "130x40", "--rows", "1", "4", "--threads", "1", "--repeats", "1"]
    assert gemv.main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["shape"], line["rows"]) for line in lines] == [("96x64", 1), ("96x64", 4), ("130x40", 1),
                                                                  ("130x40", 4)]
    for line in lines:
        assert line["onednn_ms"] > 0 and line["kernel_ms"] > 0
        # The times print rounded to 0.001 ms (these tiny products take ~0.01 ms), the ratio from the exact ones.
        low = (line["onednn_ms"] - 0.0005) / (line["kernel_ms"] + 0.0005)
        high = (line["onednn_ms"] + 0.0005) / (line["kernel_ms"] - 0.0005)
        assert low - 0.005 <= line["kernel_speedup"] <= high + 0.005


@pytest.mark.parametrize(("args", "message"), [
    (["--shape", "64by64"], "shape '64by64' is not OUTxIN"),
    (["--shape", "0x64"], "shape '0x64' needs sizes >= 1"),
    (["--rows", "0"], "--rows, --threads and --repeats must be >= 1"),
])
def test_bad_arguments_exit_2_naming_them(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gemv.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
