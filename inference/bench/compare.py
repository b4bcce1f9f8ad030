"""`compare`: HF `generate` baselines and our server, same model dir, same prompts, one run.

Order matters on a small machine: the baselines run first in this process, their model is freed,
then the server is launched (or an already running one is used) and measured at each requested
concurrency. Threads are pinned fairly: HF gets `--threads` torch threads, and a launched server
gets `OMP_NUM_THREADS=--threads` (both default to every core).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inference.bench.errors import BenchmarkError
from inference.bench.metrics import BenchmarkMetrics
from inference.bench.report import (
    format_metrics_table,
    format_side_by_side,
    result_document,
    write_json,
)
from inference.bench.serve_cmd import benchmark_server, describe_mismatches, make_prompts, run_summary

# Rows of the side-by-side table: (metrics key, label).
SIDE_BY_SIDE_ROWS: tuple[tuple[str, str], ...] = (
    ("output_throughput", "output tok/s"),
    ("total_token_throughput", "total tok/s"),
    ("request_throughput", "requests/s"),
    ("median_ttft_ms", "TTFT p50 (ms)"),
    ("p99_ttft_ms", "TTFT p99 (ms)"),
    ("median_tpot_ms", "TPOT p50 (ms)"),
    ("median_itl_ms", "ITL p50 (ms)"),
    ("p99_itl_ms", "ITL p99 (ms)"),
    ("median_e2el_ms", "E2E p50 (ms)"),
    ("duration", "duration (s)"),
)

# Ratios are taken on output-token throughput, the figure issue 6's targets are stated in.
RATIO_METRIC = "output_throughput"


def throughput_ratios(
    ours: Mapping[str, Mapping[str, Any]], baselines: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, float | None]]:
    """ours[name][metric] / baseline[metric] for every (server run, baseline) pair; None if undefined."""
    ratios: dict[str, dict[str, float | None]] = {}
    for run_name, run_metrics in ours.items():
        ratios[run_name] = {}
        for base_name, base_metrics in baselines.items():
            num, den = run_metrics.get(RATIO_METRIC), base_metrics.get(RATIO_METRIC)
            ratios[run_name][base_name] = num / den if num is not None and den else None
    return ratios


def server_argv(command: str) -> list[str]:
    """Split the command; a bare `python`/`python3` becomes this interpreter, so the server runs in
    the same environment (venv) as the harness whichever `python` is first on PATH."""
    argv = shlex.split(command)
    if not argv:
        raise BenchmarkError("--launch-server is empty; give the full command, e.g. 'python -m inference serve ...'")
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


@contextmanager
def launched_server(command: str | None, log_path: Path, threads: int | None) -> Iterator[Any]:
    """Start the server command in its own process group, yield a liveness check, stop it after.

    Output goes to a log file (a pipe nobody reads would fill up and stall the server).
    """
    if command is None:
        yield None
        return
    argv = server_argv(command)
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        try:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as exc:
            raise BenchmarkError(f"cannot start the server {argv[0]!r}: {exc}") from None
        try:
            yield lambda: process.poll() is None
        finally:
            _stop(process)
    print(f"server log: {log_path}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (it drains), then SIGKILL what is left after 30 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _run_baselines(args: argparse.Namespace, prompts: list[Any]) -> dict[str, BenchmarkMetrics]:
    import torch

    from inference.bench.hf_baseline import load_hf_model, run_one_at_a_time, run_padded_batch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    model, tokenizer = load_hf_model(args.model_dir, args.dtype)
    runs = []
    if not args.skip_hf_serial:
        print(f"HF one-at-a-time: {len(prompts)} prompts ...", flush=True)
        runs.append(run_one_at_a_time(model, tokenizer, prompts, args.output_len, args.percentiles))
    print(f"HF padded batch of {len(prompts)} ...", flush=True)
    runs.append(run_padded_batch(model, tokenizer, prompts, args.output_len, args.percentiles))
    del model
    gc.collect()  # free the baseline's weights before the server loads its own
    for run in runs:
        print(format_metrics_table(run.name, run.metrics, args.percentiles))
    return {run.name: run.metrics for run in runs}


def run_compare(args: argparse.Namespace) -> int:
    """Entry point of `python -m inference.bench compare`."""
    from inference.bench.serve_cmd import load_tokenizer

    prompts = make_prompts(load_tokenizer(args.model_dir), args)
    baselines = _run_baselines(args, prompts)

    ours: dict[str, BenchmarkMetrics] = {}
    server_runs: dict[str, Any] = {}
    server_error: str | None = None
    log_path = args.server_log or (args.out.with_suffix(".server.log") if args.out else Path("server.log"))
    try:
        with launched_server(args.launch_server, log_path, args.threads) as is_alive:
            for concurrency in args.max_concurrency:
                name = f"ours_c{concurrency}"
                print(f"server at max concurrency {concurrency} ...", flush=True)
                config, run = asyncio.run(benchmark_server(args, prompts, concurrency, math.inf, is_alive))
                print(format_metrics_table(name, run.metrics, args.percentiles))
                for warning in describe_mismatches(run, args.input_len):
                    print(warning)
                ours[name] = run.metrics
                server_runs[name] = run_summary(config, run)
    except BenchmarkError as exc:
        # Keep the baselines (minutes of work) in the result file; the failure is recorded there too.
        server_error = f"{exc}" + (f" (server log: {log_path})" if args.launch_server else "")

    ours_dicts = {k: v.to_dict() for k, v in ours.items()}
    base_dicts = {k: v.to_dict() for k, v in baselines.items()}
    ratios = throughput_ratios(ours_dicts, base_dicts)
    print()
    print(format_side_by_side({**ours_dicts, **base_dicts}, SIDE_BY_SIDE_ROWS))
    print(f"\nratios of {RATIO_METRIC} (ours / baseline):")
    for run_name, per_base in ratios.items():
        cells = ", ".join(f"/ {b}: {'n/a' if r is None else f'{r:.2f}x'}" for b, r in per_base.items())
        print(f"  {run_name} {cells}")

    if args.out:
        config = {
            "model_dir": str(args.model_dir),
            "input_len": args.input_len,
            "output_len": args.output_len,
            "num_prompts": args.num_prompts,
            "prompt_format": args.prompt_format,
            "seed": args.seed,
            "hf_dtype": args.dtype,
            "threads": args.threads or os.cpu_count(),
            "launch_server": args.launch_server,
            "base_url": args.base_url,
        }
        document = result_document(
            "compare",
            config,
            baselines=base_dicts,
            ours=server_runs,
            ratios={RATIO_METRIC: ratios},
            server_error=server_error,
        )
        write_json(args.out, document)
        print(f"wrote {args.out}")
    if server_error:
        raise BenchmarkError(server_error)
    return 0 if all(m.completed for m in ours.values()) else 1
