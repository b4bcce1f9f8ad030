"""Rank launch environment, process-group set-up, the step broadcast channel and the watchdog.

How ranks are launched: one process per tensor-parallel rank on one node, started by
`python -m inference serve --tp-size N` itself (inference/supervisor.py) or by the DeepSpeed
launcher; both set `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_SIZE`, `MASTER_ADDR`, `MASTER_PORT`:

    # CUDA node, 2 GPUs
    deepspeed --num_gpus 2 --module inference serve --tp-size 2 ...
    # CPU (tests, benchmarks here): 2 ranks, each pinned to its own cores
    deepspeed --num_accelerators 2 --bind_cores_to_rank --module inference serve --tp-size 2 ...

`--bind_cores_to_rank` needs `numactl` on the PATH (Debian package `numactl`); without it drop the
flag and the engine divides the visible cores between the ranks itself (`torch.set_num_threads`).
OpenMP waits with GNU OpenMP's defaults (see "One OpenMP pool" in inference/README.md for why no
`GOMP_SPINCOUNT` is set any more); `OMP_WAIT_POLICY`/`GOMP_SPINCOUNT` set by the launcher apply.
Any launcher that sets the same variables works (torchrun does not set `LOCAL_SIZE`: add it).
Without `WORLD_SIZE` the process runs alone (TP=1). On CPU `LOCAL_SIZE` is required for TP>1:
DeepSpeed's shared-memory all-reduce uses it and crashes without it.

Control plane: rank 0 decides each step and sends it to the other ranks over a gloo group (CPU
tensors, also on CUDA nodes where the data plane is NCCL). A fixed 8-int header goes out with an
all-reduce (followers contribute zeros), which doubles as a liveness check: it completes only when
every rank takes part, so a dead follower surfaces on rank 0 as an error or a timeout instead of
a silent send. The variable payload follows as one broadcast. Collectives time out after
`collective_timeout_s` (process-group timeout); an idle rank 0 sends heartbeats well inside it.
DeepSpeed's CPU shared-memory all-reduce busy-waits with no timeout, so a `Watchdog` thread on
every rank bounds each step too: a rank stuck past the limit is declared dead (rank 0) or exits
non-zero (followers) instead of hanging.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from . import shm_op

log = logging.getLogger("inferforge.engine")

CMD_STEP = 1
CMD_HEARTBEAT = 2
CMD_SHUTDOWN = 3
CMD_BARRIER = 4
HEADER_LEN = 8

FOLLOWER_FAILURE_EXIT_CODE = 3
"""Exit status of a follower rank that lost rank 0 or timed out."""


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in the tensor-parallel group, read from the launcher's variables."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None, device_type: str = "cpu") -> LaunchEnv:
        """Parse RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_SIZE; raise ValueError naming what is wrong."""
        env = os.environ if environ is None else environ

        def read(name: str, default: int | None) -> int:
            raw = env.get(name)
            if raw is None:
                if default is None:
                    raise ValueError(f"{name} is not set; launch ranks with the DeepSpeed launcher")
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not an integer") from None
            if value < 0:
                raise ValueError(f"{name}={value} must be >= 0")
            return value

        world_size = read("WORLD_SIZE", 1)
        if world_size < 1:
            raise ValueError("WORLD_SIZE must be >= 1")
        if world_size == 1:
            return cls()
        rank = read("RANK", None)
        local_rank = read("LOCAL_RANK", rank)
        if device_type == "cpu" and "LOCAL_SIZE" not in env:
            raise ValueError(
                "LOCAL_SIZE is not set; DeepSpeed's CPU shared-memory all-reduce needs it. Launch with "
                "`deepspeed --num_accelerators N --bind_cores_to_rank ...` or export LOCAL_SIZE=N"
            )
        local_size = read("LOCAL_SIZE", world_size)
        if rank >= world_size:
            raise ValueError(f"RANK={rank} must be < WORLD_SIZE={world_size}")
        if local_size != world_size:
            raise ValueError(
                f"LOCAL_SIZE={local_size} != WORLD_SIZE={world_size}: one tensor-parallel group must "
                "live on one node"
            )
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, local_size=local_size)


def init_process_groups(env: LaunchEnv, device_type: str, timeout_s: float) -> dist.ProcessGroup | None:
    """Start DeepSpeed's distributed backend; returns the gloo group used for step broadcasts."""
    if env.world_size == 1:
        return None
    import deepspeed

    timeout = timedelta(seconds=timeout_s)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)
    else:
        # init_distributed would load (and JIT-build) it too, with torch's unbounded, silent wait on
        # its build lock; prepare() loads it bounded, or makes DeepSpeed skip it (INFERFORGE_SHM_OP).
        shm_op.prepare()
    log.info("rank %d/%d joining the process group at %s:%s (%s), at most %gs", env.rank, env.world_size,
             os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"), backend, timeout_s)
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout, auto_mpi_discovery=False, verbose=False)
    if backend == "gloo":
        dist.barrier()  # every rank has mapped every rank's shm workspace: its name can go
        if shm_op.unlink_buffer(env.rank):
            log.info("rank %d: shm all-reduce workspace mapped by all ranks; its /dev/shm name removed", env.rank)
        return dist.group.WORLD
    return dist.new_group(backend="gloo", timeout=timeout)


@dataclass
class WireStep:
    """One step as every rank sees it: a packed batch of tokens and each row's KV block table."""

    num_decode: int  # decode tokens come first, one per decoding sequence
    prefills: list[tuple[int, int, int]]  # (start, length, logits rows: scheduler.LOGITS_NONE / _LAST / _ALL)
    block_tables: list[list[int]]  # one per row: the num_decode decoders, then the prefills
    token_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64

    def encode(self, step_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        table_ints = sum(len(t) for t in self.block_tables)
        header = torch.tensor(
            [CMD_STEP, self.num_decode, len(self.prefills), self.token_ids.numel(), step_id, table_ints, 0, 0],
            dtype=torch.int64,
        )
        parts = [
            torch.tensor([int(v) for chunk in self.prefills for v in chunk], dtype=torch.int64),
            torch.tensor([len(t) for t in self.block_tables], dtype=torch.int64),
            torch.tensor([b for t in self.block_tables for b in t], dtype=torch.int64),
            self.token_ids,
            self.positions,
        ]
        return header, torch.cat(parts)

    @staticmethod
    def payload_len(header: list[int]) -> int:
        num_decode, n_prefills, n_tokens, table_ints = header[1], header[2], header[3], header[5]
        return 3 * n_prefills + (num_decode + n_prefills) + table_ints + 2 * n_tokens

    @classmethod
    def decode(cls, header: list[int], payload: torch.Tensor) -> WireStep:
        num_decode, n_prefills, n_tokens, table_ints = header[1], header[2], header[3], header[5]
        n_rows = num_decode + n_prefills
        head = 3 * n_prefills + n_rows + table_ints
        values = payload[:head].tolist()
        prefills = [(values[3 * i], values[3 * i + 1], values[3 * i + 2]) for i in range(n_prefills)]
        lengths = values[3 * n_prefills : 3 * n_prefills + n_rows]
        tables, at = [], 3 * n_prefills + n_rows
        for length in lengths:
            tables.append(values[at : at + length])
            at += length
        token_ids = payload[head : head + n_tokens]
        positions = payload[head + n_tokens : head + 2 * n_tokens]
        return cls(num_decode, prefills, tables, token_ids, positions)  # type: ignore[arg-type]


class StepChannel:
    """Rank 0 -> followers step broadcast over a gloo group (no-op with one rank)."""

    def __init__(self, group: dist.ProcessGroup | None, rank: int, world_size: int) -> None:
        self.group = group
        self.rank = rank
        self.world_size = world_size
        self._header = torch.zeros(HEADER_LEN, dtype=torch.int64)

    def _all_reduce_header(self, header: torch.Tensor) -> list[int]:
        dist.all_reduce(header, op=dist.ReduceOp.SUM, group=self.group)
        return header.tolist()

    def send(self, command: int, step: WireStep | None = None, step_id: int = 0) -> None:
        """Rank 0: publish a command (and a step's payload) to every follower."""
        if self.world_size == 1:
            return
        if step is None:
            header = torch.zeros(HEADER_LEN, dtype=torch.int64)
            header[0] = command
            self._all_reduce_header(header)
            return
        header, payload = step.encode(step_id)
        self._all_reduce_header(header)
        dist.broadcast(payload, src=0, group=self.group)

    def recv(self) -> tuple[int, WireStep | None]:
        """Follower: wait for rank 0's next command (raises on timeout or a lost peer)."""
        header = self._all_reduce_header(torch.zeros(HEADER_LEN, dtype=torch.int64))
        command = header[0]
        if command != CMD_STEP:
            return command, None
        payload = torch.empty(WireStep.payload_len(header), dtype=torch.int64)
        dist.broadcast(payload, src=0, group=self.group)
        return command, WireStep.decode(header, payload)


class Watchdog:
    """Calls `on_expire` once if an armed section runs longer than `limit_s` (checked every `poll_s`)."""

    def __init__(self, limit_s: float, on_expire: Callable[[float], None], poll_s: float = 0.25) -> None:
        self.limit_s = limit_s
        self._on_expire = on_expire
        self._poll_s = poll_s
        self._since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inferforge-watchdog", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        self._since = time.monotonic()

    def disarm(self) -> None:
        self._since = None

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            since = self._since
            if since is not None and time.monotonic() - since > self.limit_s:
                self._on_expire(time.monotonic() - since)
                return


def exit_rank(reason: str, code: int) -> None:
    """Terminate this rank at once with a non-zero status (its main thread may be stuck in C++)."""
    log.error("rank exiting: %s", reason)
    logging.shutdown()
    os._exit(code)


def exit_follower(reason: str) -> None:
    """Terminate a follower rank that lost rank 0 or timed out."""
    exit_rank(reason, FOLLOWER_FAILURE_EXIT_CODE)
