"""The `python -m inference` command line: argument errors exit 2 with a message naming the fix,
never a traceback; `make-model` delegates to the model factory; the TP ranks' command and
variables are tested with the supervisor (test_supervisor.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inference.serve import build_parser

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inference", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("args", "message"), [
    ([], "the following arguments are required: command"),
    (["serve"], "--model-dir"),
    (["serve", "--model-dir", "{model}", "--dtype", "int4"], "invalid choice: 'int4'"),
    (["serve", "--model-dir", "{model}", "--tp-size", "0"], "--tp-size: allowed: >= 1 and <= 8, got 0"),
    (["serve", "--model-dir", "{model}", "--tp-size", "two"], "'two' is not an integer"),
    (["serve", "--model-dir", "{model}", "--port", "70000"], "1..65535"),
    (["serve", "--model-dir", "{model}", "--max-batch-size", "-1"], "allowed: >= 1 and <= 1024, got -1"),
    (["serve", "--model-dir", "{model}", "--drain-timeout", "soon"], "--drain-timeout: 'soon' is not an integer"),
    (["serve", "--model-dir", "{model}", "--drain-timeout", "-3"], ">= 0"),
    (["serve", "--model-dir", "{model}", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["serve", "--model-dir", "{model}", "--tool-call-parser", "pythonic"], "invalid choice: 'pythonic'"),
    (["serve", "--model-dir", "/nonexistent/model", "--allow-unauthenticated"], "is not a directory"),
    (["serve", "--model-dir", "{empty}", "--allow-unauthenticated"], "no config.json"),
    (["serve", "--model-dir", "{model}", "--allow-unauthenticated", "--max-model-len", "1"],
     "--max-model-len: allowed: >= 2"),
    (["serve", "--model-dir", "{model}", "--kv-cache-memory", "0"], "--kv-cache-memory: allowed: > 0"),
    (["serve", "--model-dir", "{model}", "--kv-cache-memory", "inf"], "'inf' is not a finite number"),
    (["serve", "--model-dir", "{model}", "--gpu-memory-utilization", "1.5"], "allowed: > 0 and <= 1, got 1.5"),
    (["serve", "--model-dir", "{model}", "--block-size", "4096"], "allowed: >= 1 and <= 1024, got 4096"),
    # 0.0001 GiB = 104,857 bytes: 12 blocks of 16 tokens x 512 bytes, less than 1,024 tokens.
    (["serve", "--model-dir", "{model}", "--allow-unauthenticated", "--dtype", "float32", "--kv-cache-memory",
      "0.0001", "--max-model-len", "1024"], "max_model_len 1024 needs 64 KV blocks of 16 tokens"),
    (["teleport"], "invalid choice: 'teleport'"),
])
def test_argument_errors_exit_2_with_a_message_and_no_traceback(
    args: list[str], message: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    argv = [a.format(model=tiny_model_dir, empty=tmp_path) for a in args]
    result = run(*argv)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_help_lists_the_flags_the_kubernetes_component_uses() -> None:
    result = run("serve", "--help")
    assert result.returncode == 0
    for flag in ("--model-dir", "--model-name", "--tp-size", "--dtype", "--host", "--port", "--max-batch-size",
                 "--max-waiting", "--max-model-len", "--api-keys-file", "--api-keys-keyvault-url",
                 "--api-keys-secret", "--allow-unauthenticated", "--drain-timeout"):
        assert flag in result.stdout


def test_defaults_are_the_secure_and_documented_ones(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--model-dir", str(tmp_path)])
    assert (args.host, args.port, args.tp_size, args.dtype) == ("127.0.0.1", 8000, 1, "bfloat16")
    assert args.allow_unauthenticated is False
    assert args.drain_timeout_s == 60  # the declared defaults: tests/test_serving_settings.py
    assert args.tool_call_parser == "hermes"
    assert build_parser().parse_args(["serve", "--model-dir", str(tmp_path), "--tool-call-parser",
                                      "mistral"]).tool_call_parser == "mistral"


def test_make_model_delegates_to_the_model_factory(tmp_path: Path) -> None:
    help_text = run("make-model", "--help")
    assert help_text.returncode == 0 and "--preset" in help_text.stdout
    bad = run("make-model", "--out", str(tmp_path / "m"), "--preset", "huge")
    assert bad.returncode == 2 and "invalid choice: 'huge'" in bad.stderr
