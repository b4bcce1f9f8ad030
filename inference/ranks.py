"""Every rank's start-up and life: process groups, loading the model, then rank 0's engine or a follower's loop.

`start_engine(EngineConfig(...))` is what the server calls on every rank (inference/serve.py): rank 0 gets the
`InferenceEngine` back, a follower runs `follower_loop` until shutdown and gets None. On the CPU the model is
loaded in a thread that ends before serving (`_in_passing_thread`), so that only the step thread keeps an
OpenMP worker pool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import numba_jit
from .distributed import (
    CMD_BARRIER,
    CMD_HEARTBEAT,
    CMD_SHUTDOWN,
    CMD_STEP,
    FOLLOWER_FAILURE_EXIT_CODE,
    LaunchEnv,
    StepChannel,
    Watchdog,
    exit_follower,
    exit_rank,
    init_process_groups,
)
from .engine import InferenceEngine
from .engine_config import EngineConfig
from .model_runner import ModelRunner, default_num_threads, resolve_device

log = logging.getLogger("inferforge.engine")

# Rank 0's status when the start-up across ranks fails (the HTTP server's "engine failed" status).
STARTUP_FAILURE_EXIT_CODE = 1


def follower_loop(runner: ModelRunner, channel: StepChannel, timeout_s: float) -> None:
    """Run rank 0's steps until it sends shutdown; exit the process non-zero on timeout or error."""
    watchdog = Watchdog(timeout_s * 1.5, lambda s: exit_follower(f"no progress from rank 0 for {s:.1f}s"))
    try:
        while True:
            watchdog.arm()
            command, step = channel.recv()
            if command == CMD_SHUTDOWN:
                return
            if command == CMD_STEP and step is not None:
                runner.execute(step)
            elif command not in (CMD_HEARTBEAT, CMD_BARRIER):
                raise RuntimeError(f"unknown command {command} from rank 0")
    finally:
        watchdog.stop()


@dataclass
class RankContext:
    """What `load_rank` set up on this rank: launch place, loaded model runner, step channel."""

    cfg: EngineConfig
    env: LaunchEnv
    runner: ModelRunner
    channel: StepChannel
    tokenizer: object | None = None  # rank 0 only


def load_rank(cfg: EngineConfig, environ: dict[str, str] | None = None) -> RankContext:
    """Validate the config, join the process group and load (and shard) the model on this rank."""
    cfg.validate()
    env = LaunchEnv.from_environ(environ, _device_type(cfg))
    device = resolve_device(cfg, env)
    threads = cfg.num_threads or default_num_threads(env)
    if device.type == "cpu":
        torch.set_num_threads(threads)
    group = init_process_groups(env, device.type, cfg.collective_timeout_s)
    channel = StepChannel(group, env.rank, env.world_size)
    tokenizer = None
    if env.rank == 0:
        from transformers import AutoTokenizer

        # Before the model, so rank 0's first step follows its model load as closely as the
        # followers' first wait follows theirs (that wait is bounded by collective_timeout_s).
        tokenizer = AutoTokenizer.from_pretrained(cfg.model_dir)
    runner = ModelRunner(cfg, env, device, channel.group)
    if device.type == "cpu":
        # Again: starting Numba's OpenMP threading layer (the CPU kernels compile and warm up in the load)
        # sets this thread's OpenMP count to NUMBA_NUM_THREADS, every core. With 2 ranks on 2 cores each
        # rank then ran 2 threads whose barriers spun against the other rank's: TP=2 decoded ~25x slower
        # than TP=1 (issue 25). The engine's step thread and the follower loop take this thread's count.
        torch.set_num_threads(threads)
    log.info(
        "rank %d/%d loaded %s (%s, %d threads)",
        env.rank, env.world_size, cfg.model_dir, runner.dtype, torch.get_num_threads(),
    )
    return RankContext(cfg, env, runner, channel, tokenizer)


def run_rank(ctx: RankContext) -> InferenceEngine | None:
    """Rank 0: warm up every rank and start the engine loop. Followers: serve steps until shutdown
    (returns None) or raise SystemExit(3) when rank 0 is lost."""
    if ctx.env.rank != 0:
        numba_jit.match_torch_threads()
        try:
            follower_loop(ctx.runner, ctx.channel, ctx.cfg.collective_timeout_s)
        except Exception as exc:
            log.error("follower rank %d failed: %s: %s", ctx.env.rank, type(exc).__name__, exc)
            raise SystemExit(FOLLOWER_FAILURE_EXIT_CODE) from exc
        return None

    # Same warm-up forward on every rank: allocates the KV cache and proves all ranks are up. Its
    # shm all-reduce busy-waits on a missing rank with no timeout of its own: bound it.
    limit_s = ctx.cfg.collective_timeout_s * 1.5
    log.info("warm-up step on all %d ranks, at most %gs", ctx.env.world_size, limit_s)
    watchdog = Watchdog(limit_s, lambda s: exit_rank(
        f"the warm-up step did not complete on all ranks in {s:.1f}s (a rank is missing or stuck)",
        STARTUP_FAILURE_EXIT_CODE))
    watchdog.arm()
    try:
        warm = ctx.runner.warm_up_step()
        ctx.channel.send(CMD_STEP, warm, 0)
        ctx.runner.execute(warm)
    finally:
        watchdog.stop()
    engine = InferenceEngine(ctx.cfg, ctx.runner, ctx.channel, ctx.tokenizer)
    engine.start()
    return engine


def _device_type(cfg: EngineConfig) -> str:
    return "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"


def _in_passing_thread(fn: Callable, *args: object) -> object:
    """`fn(*args)` run in a thread that ends with it; its result returned, its exception re-raised.

    Why, on the CPU: libgomp (PyTorch's OpenMP) keeps a pool of worker threads for every thread
    that ever ran a parallel region, for as long as that thread lives, and once the pooled threads
    outnumber the cores its workers stop spinning between parallel regions and sleep, so every
    torch op pays a futex wake-up. Rank 0 steps in its own thread (the HTTP event loop owns the main
    one); had the main thread loaded the model, its pool would stay and throttle the step thread:
    measured on 2 cores with `python -m inference.engine_bench --batch 1` (bench preset, fp32), mean
    TPOT 11.9 ms before against 10.0 ms with this (the step alone: 8.0 ms). Loading in a
    thread that ends leaves the step thread the only pool.
    """
    result: list[object] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn(*args))
        except BaseException as exc:  # re-raised in the caller (SystemExit of a follower included)
            error.append(exc)

    thread = threading.Thread(target=target, name="inferforge-load", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def start_engine(cfg: EngineConfig, environ: dict[str, str] | None = None) -> InferenceEngine | None:
    """Entry point on every rank: load the model, then on rank 0 return the running engine; on
    followers serve until shutdown and return None (SystemExit(3) when rank 0 is lost).

    On the CPU the loading (and a follower's step loop) runs in a thread that ends with it (see
    `_in_passing_thread`); the calling thread runs no torch op, and should keep it that way."""
    if _device_type(cfg) == "cpu":
        return _in_passing_thread(lambda: run_rank(load_rank(cfg, environ)))  # type: ignore[return-value]
    return run_rank(load_rank(cfg, environ))
