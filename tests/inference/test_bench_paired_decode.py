"""`python -m inference.bench.paired_decode`: timings of two checkouts, and no trace left in either's caches."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inference.bench import paired_decode

REPO = Path(__file__).resolve().parents[2]


def test_a_baseline_checkout_still_serves_after_being_compared(tiny_model_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    baseline = tmp_path / "baseline"
    shutil.copytree(REPO / "inference", baseline / "inference", ignore=shutil.ignore_patterns("__pycache__"))
    args = ["--baseline", str(baseline), "--model", str(tiny_model_dir), "--context", "4", "--batch", "1",
            "--steps", "6", "--threads", "1"]
    assert paired_decode.main(args) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["context"] == 4 and result["batch_1"]["baseline_ms"] > 0
    # The comparison imported the copy as `inference_baseline`. Imported as `inference`, as its own
    # server does, its Numba kernels must still load: no cache entry may name the other module.
    assert not list((baseline / "inference").rglob("*.nbi"))
    probe = "from inference import cpu_attention, cpu_gemm; cpu_attention.warm_up(); cpu_gemm.pack_linears(" \
            "__import__('torch').nn.Sequential(), True); print('ok')"
    done = subprocess.run([sys.executable, "-c", probe], cwd=baseline, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
