"""Engine-only throughput (no HTTP): closed batches of concurrent requests through `AsyncEngine`.

    python -m inference.model_factory --out /tmp/bench-model --preset bench
    python -m inference.engine_bench --model /tmp/bench-model --batch 1 64
    deepspeed --num_accelerators 2 --bind_cores_to_rank --module inference.engine_bench \\
        --model /tmp/bench-model --batch 1 64          # TP=2

For each batch size B it submits B requests at once (random prompt ids of --prompt-len tokens,
--output-len tokens each with ignore_eos), after one warm-up round, and prints one JSON line:
output tokens/s over the whole run, decode tokens/s after the last first token (steady state),
mean time to first token and mean time per output token, the most requests running at once and
the KV preemptions. KV capacity at a fixed memory (tiny model, 8 MiB of KV, 200 requests at once):

    python -m inference.engine_bench --model /tmp/tiny --dtype float32 --batch 200 \
        --kv-cache-memory 0.0078125 --max-model-len 1024
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from .engine import InferenceEngine
from .engine_api import GenerationRequest, SamplingParams
from .engine_config import EngineConfig
from .ranks import start_engine


async def run_batch(
    engine: InferenceEngine, batch: int, prompt_len: int, output_len: int, temperature: float, tag: str
) -> dict[str, float]:
    """Submit `batch` requests at once and time them; returns the figures."""
    generator = torch.Generator().manual_seed(batch)
    prompts = [torch.randint(3, engine.vocab_size, (prompt_len,), generator=generator).tolist() for _ in range(batch)]
    params = SamplingParams(max_tokens=output_len, temperature=temperature, ignore_eos=True)
    first: list[float] = []
    ends: list[float] = []
    counts: list[int] = []
    start = time.perf_counter()

    async def one(i: int) -> None:
        n = 0
        async for event in engine.generate(GenerationRequest(f"{tag}-{i}", prompts[i], params)):
            if event.token_id is not None:
                n += 1
                if n == 1:
                    first.append(time.perf_counter())
        ends.append(time.perf_counter())
        counts.append(n)

    peak_running = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak_running
        while not done.is_set():
            peak_running = max(peak_running, engine.num_running)
            await asyncio.sleep(0.002)

    preempted_before = engine.num_preemptions
    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(one(i) for i in range(batch)))
    end = time.perf_counter()
    done.set()
    await watcher
    total = sum(counts)
    last_first = max(first)
    decode_tokens = total - batch
    ttfts = [t - start for t in first]
    # TPOT per request = (end - first token) / (tokens - 1); requests finish in first-token order.
    spans = zip(sorted(first), sorted(ends), strict=True)
    tpots = [(e - f) / (output_len - 1) for f, e in spans] if output_len > 1 else [0.0]
    return {
        "batch": batch,
        "output_tokens": total,
        "elapsed_s": round(end - start, 3),
        "output_tok_per_s": round(total / (end - start), 1),
        "steady_decode_tok_per_s": round(decode_tokens / (end - last_first), 1) if end > last_first else 0.0,
        "mean_ttft_ms": round(1000 * statistics.mean(ttfts), 1),
        "mean_tpot_ms": round(1000 * statistics.mean(tpots), 2),
        "peak_running": peak_running,
        "preemptions": engine.num_preemptions - preempted_before,
    }


async def bench(engine: InferenceEngine, args: argparse.Namespace) -> list[dict[str, float]]:
    await run_batch(engine, max(args.batch), args.prompt_len, min(8, args.output_len), args.temperature, "warm")
    results = []
    for batch in args.batch:
        figures = await run_batch(engine, batch, args.prompt_len, args.output_len, args.temperature, f"b{batch}")
        figures.update(
            dtype=str(engine.dtype).removeprefix("torch."), device=args.device, threads=torch.get_num_threads(),
            temperature=args.temperature,
        )
        print(json.dumps(figures), flush=True)
        results.append(figures)
    await engine.shutdown()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.engine_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="model directory")
    parser.add_argument("--dtype", default="bfloat16", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="concurrent requests per round")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads per rank (default: cores/ranks)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--kv-cache-memory", type=float, default=None, help="KV pool GiB per rank (engine default)")
    parser.add_argument("--max-model-len", type=int, default=None, help="default: prompt + output + 8 tokens")
    parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                        help="(default on; the warm-up round uses the largest batch's prompts)")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the DeepSpeed launcher
    args = parser.parse_args(argv)
    if min(args.batch) < 1 or args.prompt_len < 1 or args.output_len < 1:
        parser.error("--batch, --prompt-len and --output-len must be >= 1")
    if args.kv_cache_memory is not None and not args.kv_cache_memory > 0:
        parser.error(f"--kv-cache-memory must be > 0 GiB, got {args.kv_cache_memory}")
    cfg = EngineConfig(
        model_dir=args.model,
        dtype=args.dtype,
        max_batch_size=max(args.batch),
        max_waiting=max(args.batch),
        max_model_len=args.max_model_len or args.prompt_len + args.output_len + 8,
        kv_cache_memory_gib=args.kv_cache_memory,
        enable_prefix_caching=args.enable_prefix_caching,
        max_num_batched_tokens=max(args.max_num_batched_tokens, max(args.batch)),
        num_threads=args.threads,
        device=args.device,
    )
    engine = start_engine(cfg)
    if engine is None:
        return 0
    asyncio.run(bench(engine, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
