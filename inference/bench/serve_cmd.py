"""`serve`: benchmark one OpenAI-compatible server over HTTP."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from ..bench.client import CompletionSettings, auth_headers, wait_until_ready
from ..bench.errors import BenchmarkError
from ..bench.loadgen import LoadConfig, RunResult, run_load
from ..bench.report import format_metrics_table, result_document, write_json
from ..bench.workload import Prompt, build_prompts


def load_tokenizer(path: Path) -> Any:
    """A Hugging Face tokenizer from a local directory (never the Hub)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"cannot load a tokenizer from {path}: {exc}") from None


def make_prompts(tokenizer: Any, args: argparse.Namespace) -> list[Prompt]:
    """The run's prompts, the same for every system that is compared."""
    return build_prompts(tokenizer, args.num_prompts, args.input_len, args.seed, args.prompt_format,
                         getattr(args, "random_prefix_len", 0))


async def resolve_model_name(base_url: str, api_key: str | None) -> str:
    """The first model the server lists, for when --model is not given."""
    async with httpx.AsyncClient(base_url=base_url, headers=auth_headers(api_key), timeout=10.0) as client:
        response = await client.get("/v1/models")
    if response.status_code != 200:
        raise BenchmarkError(f"--model not given and GET /v1/models answered HTTP {response.status_code}")
    models = response.json().get("data") or []
    if not models:
        raise BenchmarkError("--model not given and the server lists no models")
    return str(models[0]["id"])


async def benchmark_server(
    args: argparse.Namespace,
    prompts: Sequence[Prompt],
    max_concurrency: int | None,
    request_rate: float = math.inf,
    is_alive: Any = None,
) -> tuple[LoadConfig, RunResult]:
    """Wait for readiness, then warm up and measure one traffic shape."""
    await wait_until_ready(args.base_url, args.ready_timeout, args.api_key, is_alive=is_alive)
    model = args.model or await resolve_model_name(args.base_url, args.api_key)
    config = LoadConfig(
        base_url=args.base_url,
        settings=CompletionSettings(model=model, output_len=args.output_len, temperature=args.temperature),
        request_rate=request_rate,
        max_concurrency=max_concurrency,
        burstiness=args.burstiness,
        seed=args.seed,
        warmup=args.warmup,
        api_key=args.api_key,
        request_timeout_s=args.request_timeout,
        run_timeout_s=args.run_timeout,
    )
    try:
        run = await run_load(config, prompts, args.percentiles)
    except RuntimeError as exc:  # every warm-up request failed: the numbers would be meaningless
        raise BenchmarkError(str(exc)) from None
    return config, run


def run_summary(config: LoadConfig, run: RunResult) -> dict[str, Any]:
    """One run's JSON section: settings, metrics, and the per-request samples behind them."""
    return {
        "load": config.describe(),
        "metrics": run.metrics.to_dict(),
        "warmup_failures": run.warmup_failures,
        "client_cpu_s": run.client_cpu_s,
        "requests": {
            "prompt_lens": [r.prompt_len for r in run.results],
            "output_lens": [r.output_len for r in run.results],
            "ttfts": [r.ttft_s for r in run.results],
            "latencies": [r.latency_s for r in run.results],
            "start_offsets": [r.start_offset_s for r in run.results],
            "itls": [r.itl_s for r in run.results],
            "errors": [r.error for r in run.results],
        },
    }


def describe_mismatches(run: RunResult, expected_input_len: int | None) -> list[str]:
    """Notes on the run: the load generator's own CPU use, and any length the server did not honour."""
    share = run.client_cpu_s / run.metrics.duration_s
    warnings = [f"load generator CPU during the run: {run.client_cpu_s:.2f}s ({share:.0%} of one core)"]
    metrics = run.metrics
    if metrics.output_len_mismatches:
        lens = sorted({r.output_len for r in run.results if r.success and r.output_len != r.expected_output_len})
        warnings.append(
            f"warning: {metrics.output_len_mismatches} requests returned an output length other than "
            f"{run.results[0].expected_output_len} (got {lens[:5]}); is ignore_eos supported?"
        )
    if expected_input_len is not None:
        bad = sum(1 for r in run.results if r.success and r.prompt_len != expected_input_len)
        if bad:
            warnings.append(f"warning: {bad} requests had a prompt length other than {expected_input_len}")
    return warnings


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of `python -m inference.bench serve`."""
    import asyncio

    tokenizer = load_tokenizer(args.tokenizer)
    prompts = make_prompts(tokenizer, args)
    config, run = asyncio.run(benchmark_server(args, prompts, args.max_concurrency, args.request_rate))
    print(format_metrics_table("Serving Benchmark Result", run.metrics, args.percentiles))
    prompt_len = args.input_len + args.random_prefix_len
    for warning in describe_mismatches(run, prompt_len if args.prompt_format == "ids" else None):
        print(warning)
    if args.out:
        workload = {
            "input_len": args.input_len,
            "random_prefix_len": args.random_prefix_len,
            "output_len": args.output_len,
            "num_prompts": args.num_prompts,
            "prompt_format": args.prompt_format,
            "seed": args.seed,
            "tokenizer": str(args.tokenizer),
        }
        write_json(args.out, result_document("serve", workload, **run_summary(config, run)))
        print(f"wrote {args.out}")
    return 0 if run.metrics.completed else 1
