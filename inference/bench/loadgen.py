"""The load generator: warm-up, then open-loop (Poisson) or closed-loop (concurrency) traffic."""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import httpx

from ..bench.client import CompletionSettings, auth_headers, stream_completion
from ..bench.metrics import DEFAULT_PERCENTILES, BenchmarkMetrics, RequestResult, compute_metrics
from ..bench.workload import Prompt, arrival_offsets


@dataclass(frozen=True)
class LoadConfig:
    """How traffic is shaped and bounded."""

    base_url: str
    settings: CompletionSettings
    request_rate: float = math.inf
    """Requests per second (open loop); inf sends all at once, bounded by max_concurrency."""
    max_concurrency: int | None = None
    """At most this many requests in flight (closed loop when the rate is inf)."""
    burstiness: float = 1.0
    seed: int = 0
    warmup: int = 0
    api_key: str | None = None
    request_timeout_s: float = 300.0
    """Per request: the longest a single response may take."""
    run_timeout_s: float = 1800.0
    """For the whole measured run; requests still open then are cancelled and count as failed."""

    def describe(self) -> dict[str, object]:
        """JSON-ready settings for the result file (the API key is never written)."""
        out = asdict(self)
        out.pop("api_key")
        out["request_rate"] = "inf" if math.isinf(self.request_rate) else self.request_rate
        return out


@dataclass
class RunResult:
    """Per-request results of the measured run, and its aggregate metrics."""

    results: list[RequestResult]
    metrics: BenchmarkMetrics
    warmup_failures: list[str]
    client_cpu_s: float = 0.0
    """CPU time this process spent during the measured run: on a small machine the load generator
    competes with the server for cores, so the result file says how much it took."""


def _process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _client(config: LoadConfig, connections: int) -> httpx.AsyncClient:
    timeout = httpx.Timeout(config.request_timeout_s, connect=10.0)
    # One pooled connection per in-flight request, so the pool never queues requests itself.
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        base_url=config.base_url, headers=auth_headers(config.api_key), timeout=timeout, limits=limits
    )


async def _warmup(client: httpx.AsyncClient, config: LoadConfig, prompts: Sequence[Prompt]) -> list[str]:
    """Send `warmup` requests (cycling the prompts) and return their errors; results are dropped."""
    if config.warmup == 0:
        return []
    limit = asyncio.Semaphore(config.max_concurrency or config.warmup)

    async def one(prompt: Prompt) -> RequestResult:
        async with limit:
            return await stream_completion(client, prompt, config.settings, time.perf_counter())

    warm = [prompts[i % len(prompts)] for i in range(config.warmup)]
    async with asyncio.timeout(config.run_timeout_s):
        results = await asyncio.gather(*(one(p) for p in warm))
    return [r.error for r in results if not r.success]


async def run_load(
    config: LoadConfig,
    prompts: Sequence[Prompt],
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> RunResult:
    """Warm up, then send every prompt once on the configured schedule and measure it."""
    if not prompts:
        raise ValueError("no prompts to send")
    in_flight = config.max_concurrency or len(prompts)
    async with _client(config, max(in_flight, 1)) as client:
        warmup_errors = await _warmup(client, config, prompts)
        if config.warmup and len(warmup_errors) == config.warmup:
            raise RuntimeError(f"every warm-up request failed; first error: {warmup_errors[0]}")

        offsets = arrival_offsets(len(prompts), config.request_rate, config.seed, config.burstiness)
        limit = asyncio.Semaphore(in_flight)
        cpu_start = _process_cpu_s()
        run_start = time.perf_counter()

        async def scheduled(prompt: Prompt, offset: float) -> RequestResult:
            # The arrival time is fixed up front; under a concurrency cap a request may start
            # later than it arrived, as in vLLM (the wait shows up as client-side queueing).
            delay = run_start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with limit:
                return await stream_completion(client, prompt, config.settings, run_start)

        tasks = [asyncio.create_task(scheduled(p, o)) for p, o in zip(prompts, offsets, strict=True)]
        done, pending = await asyncio.wait(tasks, timeout=config.run_timeout_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Duration ends at the last completion; after a timeout, at the timeout.
        duration = time.perf_counter() - run_start
        client_cpu = _process_cpu_s() - cpu_start

    results: list[RequestResult] = []
    for prompt, task in zip(prompts, tasks, strict=True):
        if task in done and task.exception() is None:
            results.append(task.result())
        else:
            reason = (
                f"cancelled: run exceeded {config.run_timeout_s:g}s"
                if task in pending
                else f"client error: {task.exception()!r}"
            )
            results.append(RequestResult(False, prompt.prompt_len, config.settings.output_len, error=reason))
    return RunResult(results, compute_metrics(results, duration, percentiles), warmup_errors, client_cpu)
