"""Time one rank's decode step (`ModelRunner.execute`) alone: no scheduler, no HTTP.

    python -m inference.model_factory --out /tmp/m --preset roofline
    python -m inference.bench.decode_step --model /tmp/m --batch 1 64 --context 48
    python -m inference.bench.decode_step --model /tmp/m --batch 64 --no-pack      # F.linear (MKL) products
    python -m inference.bench.decode_step --model /tmp/m --batch 64 --no-cpu-attention  # gather + matmuls
    python -m inference.bench.decode_step --model /tmp/m --batch 1 --no-matvec  # oneDNN at 1-2 rows too
    python -m inference.bench.decode_step --model /tmp/m --batch 1 --thread main  # compare: step thread

Prefills `batch` sequences of `context` random tokens, then times `--steps` decode steps (the
first 5 are warm-up) and prints one JSON line per batch size with the median step time. `--thread
main` runs the steps on the thread that loaded the model; `passing` (default) loads in a thread that
ends and steps in another, as the server does (see `ranks._in_passing_thread`). `--profile` adds the
torch profiler's top ops of 10 more steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from .. import numba_jit
from ..distributed import LaunchEnv, WireStep
from ..engine_config import EngineConfig
from ..model_runner import ModelRunner


def _load(model: Path, batch: int, max_len: int, pack: bool, cpu_attention: bool, matvec: bool,
          threads: int) -> ModelRunner:
    torch.set_num_threads(threads)
    cfg = EngineConfig(model_dir=model, dtype="float32", max_batch_size=batch, max_model_len=max_len,
                       max_num_batched_tokens=max(2048, batch * max_len), pack_cpu_weights=pack,
                       cpu_attention_kernel=cpu_attention, cpu_matvec_kernel=matvec)
    return ModelRunner(cfg, LaunchEnv(), torch.device("cpu"))


def _time_steps(runner: ModelRunner, batch: int, context: int, steps: int, threads: int, profile: bool) -> dict:
    torch.set_num_threads(threads)
    numba_jit.match_torch_threads()
    blocks = -(-(context + steps + 16) // runner.cache.block_size)
    tables = [list(range(i * blocks, (i + 1) * blocks)) for i in range(batch)]
    generator = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, runner.vocab_size, (batch * context,), generator=generator)
    runner.execute(WireStep(0, [(0, context, True)] * batch, tables, ids, torch.arange(context).repeat(batch)))

    def step(i: int) -> float:
        tokens = torch.randint(3, runner.vocab_size, (batch,), generator=generator)
        start = time.perf_counter()
        runner.execute(WireStep(batch, [], tables, tokens, torch.full((batch,), context + i, dtype=torch.int64)))
        return time.perf_counter() - start

    times = [step(i) for i in range(steps)]
    result: dict = {"batch": batch, "context": context, "median_step_ms": round(1000 * statistics.median(times[5:]), 2)}
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(steps, steps + 10):
                step(i)
        result["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return result


def _in_thread(fn, *args):
    box: list = []
    thread = threading.Thread(target=lambda: box.append(fn(*args)))
    thread.start()
    thread.join()
    return box[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.bench.decode_step", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="model directory")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--context", type=int, default=48, help="cached tokens per sequence")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--no-pack", dest="pack", action="store_false", help="F.linear instead of prepacked oneDNN")
    parser.add_argument("--no-cpu-attention", dest="cpu_attention", action="store_false",
                        help="decode attention by gather + matmuls instead of inference.cpu_attention's kernel")
    parser.add_argument("--no-matvec", dest="matvec", action="store_false",
                        help="oneDNN for 1-2 row products too, instead of inference.cpu_gemv's kernel")
    parser.add_argument("--thread", choices=["passing", "main"], default="passing",
                        help="passing: load in a thread that ends, step in another (as served); main: one thread")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    if not args.model.is_dir():
        parser.error(f"--model {args.model} is not a directory")
    if min(args.batch) < 1 or args.context < 1 or args.steps < 6 or args.threads < 1:
        parser.error("--batch, --context and --threads must be >= 1 and --steps >= 6")
    for batch in args.batch:
        load_args = (args.model, batch, args.context + args.steps + 32, args.pack, args.cpu_attention, args.matvec,
                     args.threads)
        run_args = (batch, args.context, args.steps, args.threads, args.profile)
        if args.thread == "main":
            result = _time_steps(_load(*load_args), *run_args)
        else:
            runner = _in_thread(_load, *load_args)
            result = _in_thread(_time_steps, runner, *run_args)
        profile = result.pop("profile", None)
        flags = {"pack": args.pack, "cpu_attention": args.cpu_attention, "matvec": args.matvec,
                 "thread": args.thread}
        print(json.dumps({**result, **flags}), flush=True)
        if profile:
            print(profile, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
