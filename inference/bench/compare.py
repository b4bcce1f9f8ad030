"""`compare`: HF `generate` baselines and our server, same model dir, same prompts, same run.

The HF model is loaded in this process and the server launched once (or an already running one is
used via --base-url); then each round runs the baselines (the server idles) and the server at each
requested concurrency (HF idles). Several rounds alternate the two, so slow drift in other load on
a shared machine hits both sides, and the summary reports medians over rounds and the median of
the paired per-round ratios. Threads are pinned fairly: HF gets `--threads` torch threads, and a
launched server gets `OMP_NUM_THREADS=--threads` (both default to every core).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..bench.errors import BenchmarkError
from ..bench.report import (
    format_metrics_table,
    format_side_by_side,
    result_document,
    write_json,
)
from ..bench.serve_cmd import benchmark_server, describe_mismatches, make_prompts, run_summary

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


def _run_baselines(args: argparse.Namespace, model: Any, tokenizer: Any, prompts: list[Any]) -> dict[str, Any]:
    """One round of the HF baselines; returns metrics dicts by name."""
    from ..bench.hf_baseline import run_one_at_a_time, run_padded_batch

    runs = []
    if not args.skip_hf_serial:
        print(f"HF one-at-a-time: {len(prompts)} prompts ...", flush=True)
        runs.append(run_one_at_a_time(model, tokenizer, prompts, args.output_len, args.percentiles))
    print(f"HF padded batch of {len(prompts)} ...", flush=True)
    runs.append(run_padded_batch(model, tokenizer, prompts, args.output_len, args.percentiles))
    for run in runs:
        print(format_metrics_table(run.name, run.metrics, args.percentiles))
    return {run.name: run.metrics.to_dict() for run in runs}


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def median_across_rounds(rounds: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """Per system and numeric metric, the median over the rounds that have a value for it."""
    out: dict[str, dict[str, float | None]] = {}
    for system in dict.fromkeys(name for one in rounds for name in one):
        keys = dict.fromkeys(k for one in rounds if system in one for k, v in one[system].items() if _numeric(v))
        out[system] = {}
        for key in keys:
            values = [one[system][key] for one in rounds if system in one and _numeric(one[system].get(key))]
            out[system][key] = statistics.median(values) if values else None
    return out


def median_ratios(
    per_round: Sequence[Mapping[str, Mapping[str, float | None]]],
) -> dict[str, dict[str, float | None]]:
    """The median of paired per-round ratios: each ratio compares runs taken minutes apart, which
    cancels most of the drift that other load on a shared machine causes between rounds."""
    out: dict[str, dict[str, float | None]] = {}
    for ours in dict.fromkeys(name for one in per_round for name in one):
        bases = dict.fromkeys(b for one in per_round for b in one.get(ours, {}))
        out[ours] = {}
        for base in bases:
            values = [r for one in per_round if (r := one.get(ours, {}).get(base)) is not None]
            out[ours][base] = statistics.median(values) if values else None
    return out


def _print_ratios(title: str, ratios: Mapping[str, Mapping[str, float | None]]) -> None:
    print(title)
    for run_name, per_base in ratios.items():
        cells = ", ".join(f"/ {b}: {'n/a' if r is None else f'{r:.2f}x'}" for b, r in per_base.items())
        print(f"  {run_name} {cells}")


def run_compare(args: argparse.Namespace) -> int:
    """Entry point of `python -m inference.bench compare`."""
    import torch

    from ..bench.hf_baseline import load_hf_model

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    model, tokenizer = load_hf_model(args.model_dir, args.dtype)
    prompts = make_prompts(tokenizer, args)

    rounds: list[dict[str, Any]] = []
    server_error: str | None = None
    log_path = args.server_log or (args.out.with_suffix(".server.log") if args.out else Path("server.log"))
    try:
        with launched_server(args.launch_server, log_path, args.threads) as is_alive:
            for index in range(args.rounds):
                print(f"--- round {index + 1} of {args.rounds} ---", flush=True)
                # The server idles while HF runs, and HF's model idles while the server runs.
                one: dict[str, Any] = {"baselines": _run_baselines(args, model, tokenizer, prompts), "ours": {}}
                rounds.append(one)
                for concurrency in args.max_concurrency:
                    name = f"ours_c{concurrency}"
                    print(f"server at max concurrency {concurrency} ...", flush=True)
                    config, run = asyncio.run(benchmark_server(args, prompts, concurrency, math.inf, is_alive))
                    print(format_metrics_table(name, run.metrics, args.percentiles))
                    for note in describe_mismatches(run, args.input_len + args.random_prefix_len):
                        print(note)
                    one["ours"][name] = run_summary(config, run)
                ours_metrics = {k: v["metrics"] for k, v in one["ours"].items()}
                one["ratios"] = throughput_ratios(ours_metrics, one["baselines"])
                print()
                print(format_side_by_side({**ours_metrics, **one["baselines"]}, SIDE_BY_SIDE_ROWS))
                _print_ratios(f"ratios of {RATIO_METRIC} in round {index + 1} (ours / baseline):", one["ratios"])
    except BenchmarkError as exc:
        # Keep what was measured (minutes of work) in the result file; the failure is recorded too.
        server_error = f"{exc}" + (f" (server log: {log_path})" if args.launch_server else "")
    finally:
        del model
        gc.collect()

    systems_per_round = [{**{k: v["metrics"] for k, v in one["ours"].items()}, **one["baselines"]} for one in rounds]
    medians = median_across_rounds(systems_per_round)
    ratios = median_ratios([one.get("ratios", {}) for one in rounds])
    if len(rounds) > 1:
        print(f"\nmedians over {len(rounds)} rounds")
        print(format_side_by_side(medians, SIDE_BY_SIDE_ROWS))
        _print_ratios(f"median of paired per-round ratios of {RATIO_METRIC} (ours / baseline):", ratios)

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
            "rounds": args.rounds,
            "launch_server": args.launch_server,
            "base_url": args.base_url,
        }
        document = result_document(
            "compare",
            config,
            rounds=rounds,
            summary={"median_metrics": medians, "median_ratios": {RATIO_METRIC: ratios}},
            server_error=server_error,
        )
        write_json(args.out, document)
        print(f"wrote {args.out}")
    if server_error:
        raise BenchmarkError(server_error)
    complete = all(run["metrics"]["completed"] for one in rounds for run in one["ours"].values())
    return 0 if complete and rounds else 1
