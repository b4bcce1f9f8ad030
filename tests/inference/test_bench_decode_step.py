"""`python -m inference.bench.decode_step` prints one step time per batch size and refuses bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.bench import decode_step


@pytest.mark.parametrize("extra", [[], ["--no-pack", "--thread", "main"], ["--no-matvec"]])
def test_prints_a_median_step_time_per_batch(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
                                             extra: list[str]) -> None:
    args = ["--model", str(tiny_model_dir), "--batch", "1", "3", "--context", "5", "--steps", "6", "--threads", "1"]
    assert decode_step.main(args + extra) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["batch"] for line in lines] == [1, 3]
    assert all(line["median_step_ms"] > 0 and line["pack"] is ("--no-pack" not in extra) for line in lines)
    assert all(line["matvec"] is ("--no-matvec" not in extra) for line in lines)


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "/nonexistent"], "--model /nonexistent is not a directory"),
    (["--steps", "2"], "--steps >= 6"),
])
def test_bad_arguments_exit_2_naming_them(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
                                          args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        decode_step.main(["--model", str(tiny_model_dir), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
