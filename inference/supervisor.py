"""The `--tp-size N > 1` supervisor: starts the N rank processes and decides how the replica ends.

Each rank is `python -u -m inference <the same serve arguments>` with the variables DeepSpeed's
launcher sets (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_SIZE, MASTER_ADDR, MASTER_PORT, CROSS_RANK,
CROSS_SIZE), so `inference.distributed.LaunchEnv` reads them as it reads the launcher's.

Why not `deepspeed.launcher.launch`: when a rank exits non-zero it answers with SIGTERM to every
rank, 30 s, then SIGKILL. Rank 0 cannot tell that SIGTERM from Kubernetes' (drain, exit 0), so
when its step loop was stuck in a collective with the dead rank (DeepSpeed's shared-memory
all-reduce busy-waits and never notices) it began a normal drain, kept `/health` at 200, and its
clients hung until the SIGKILL dropped their connections. Here the two events have two signals:

* SIGTERM/SIGINT to the supervisor -> SIGTERM to rank 0 only: it drains, then releases the
  followers (they exit 0); the supervisor exits 0 if every rank did. A second signal is forwarded
  too (rank 0 then exits at once); after it, ranks still running after `STOP_GRACE_S` are killed.
* A rank exits non-zero (or is killed) -> `RANK_LOST_SIGNAL` (SIGUSR1) to rank 0: it fails every
  in-flight request at once (503, or an in-band error in a stream), answers `/health` with 503 and
  exits 1. Ranks still running `RANK_LOST_EXIT_S` later are killed; the supervisor exits 1.
* Rank 0 exits: followers still running after `FOLLOWERS_EXIT_S` are killed (a clean shutdown
  releases them at once; after a rank 0 crash they may be stuck in a collective); the supervisor
  exits with rank 0's status, or 1 if a follower failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

log = logging.getLogger("inference.supervisor")

EXIT_RANK_FAILED = 1
RANK_LOST_SIGNAL = signal.SIGUSR1
# How often the supervisor looks at its ranks: a rank death reaches rank 0 within this.
POLL_S = 0.05
# After a rank death: rank 0 fails its requests and exits within ~DEAD_ENGINE_GRACE_S (3 s).
RANK_LOST_EXIT_S = 10.0
# After rank 0 exited: a released follower exits at once; one stuck in a collective does not.
FOLLOWERS_EXIT_S = 10.0
# After a second stop signal: rank 0 exits at once (bounded engine shutdown included).
STOP_GRACE_S = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_command(serve_argv: Sequence[str]) -> list[str]:
    """The command of every rank: the very same `serve` arguments (WORLD_SIZE makes it a rank)."""
    return [sys.executable, "-u", "-m", __package__, *serve_argv]  # inference or inferforge.inference


def rank_environment(base: Mapping[str, str], rank: int, world_size: int, master_port: int) -> dict[str, str]:
    """The launch variables of one rank on this node (those DeepSpeed's launcher sets)."""
    env = dict(base)
    if "OMP_NUM_THREADS" not in env:
        # Without a bound every rank spawns one thread per core and the ranks fight for them.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world_size))
    env.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_SIZE=str(world_size),
        CROSS_RANK="0", CROSS_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master_port),
    )
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the supervisor dies (no orphaned ranks)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _status(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"


class Supervisor:
    """Runs the ranks of one replica; `run()` returns the replica's exit status."""

    def __init__(self, commands: Sequence[Sequence[str]], environments: Sequence[Mapping[str, str]]) -> None:
        self._commands = [list(c) for c in commands]
        self._environments = [dict(e) for e in environments]
        self.ranks: list[subprocess.Popen] = []
        self._stop_signals = 0
        self._kill_at: float | None = None

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signals += 1
        log.info("stop signal: forwarding to rank 0", extra={"fields": {
            "signal": signal.Signals(signum).name, "count": self._stop_signals}})
        self._signal(0, signal.SIGTERM)
        if self._stop_signals > 1 and self._kill_at is None:
            self._kill_at = time.monotonic() + STOP_GRACE_S

    def _signal(self, rank: int, signum: int) -> None:
        if rank >= len(self.ranks):
            return  # not started yet: run() forwards a stop once the ranks exist
        proc = self.ranks[rank]
        if proc.poll() is None:
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                pass

    def _kill_remaining(self, reason: str) -> None:
        for rank, proc in enumerate(self.ranks):
            if proc.poll() is None:
                log.error("killing rank", extra={"fields": {"target_rank": rank, "reason": reason}})
                proc.kill()
        for proc in self.ranks:
            proc.wait()

    def _wait_all(self, deadline: float, reason: str) -> None:
        while any(p.poll() is None for p in self.ranks):
            if time.monotonic() >= deadline:
                self._kill_remaining(reason)
                return
            time.sleep(POLL_S)

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for command, env in zip(self._commands, self._environments, strict=True):
                # Own process group: a terminal's Ctrl-C or a group-wide SIGTERM reaches only the
                # supervisor, which decides (a follower killed by it would look like a rank death).
                self.ranks.append(subprocess.Popen(command, env=env, process_group=0,
                                                   preexec_fn=_die_with_parent))
            if self._stop_signals:
                self._signal(0, signal.SIGTERM)  # a stop that came while the ranks were starting
            return self._supervise()
        finally:
            if any(p.poll() is None for p in self.ranks):
                self._kill_remaining("supervisor exiting")
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _supervise(self) -> int:
        rank0 = self.ranks[0]
        while True:
            for rank, proc in enumerate(self.ranks[1:], start=1):
                code = proc.poll()
                if code is not None and code != 0:
                    return self._rank_lost(rank, code)
            code0 = rank0.poll()
            if code0 is not None:
                return self._rank0_exited(code0)
            if self._kill_at is not None and time.monotonic() >= self._kill_at:
                self._kill_remaining(f"still running {STOP_GRACE_S:g}s after a second stop signal")
                return EXIT_RANK_FAILED
            time.sleep(POLL_S)

    def _rank_lost(self, rank: int, code: int) -> int:
        log.error("rank died: telling rank 0 to fail its requests and exit", extra={"fields": {
            "dead_rank": rank, "exit": _status(code), "rank0_exit_bound_s": RANK_LOST_EXIT_S}})
        self._signal(0, RANK_LOST_SIGNAL)
        deadline = time.monotonic() + RANK_LOST_EXIT_S
        while self.ranks[0].poll() is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
        # The other followers are stuck in collectives with the dead rank: nothing to wait for.
        self._kill_remaining(f"rank {rank} died")
        return EXIT_RANK_FAILED

    def _rank0_exited(self, code: int) -> int:
        level = logging.INFO if code == 0 else logging.ERROR
        log.log(level, "rank 0 exited; waiting for the followers", extra={"fields": {
            "exit": _status(code), "bound_s": FOLLOWERS_EXIT_S}})
        self._wait_all(time.monotonic() + FOLLOWERS_EXIT_S,
                       f"still running {FOLLOWERS_EXIT_S:g}s after rank 0 exited")
        if code != 0:
            return code if code > 0 else 128 - code
        return 0 if all(p.returncode == 0 for p in self.ranks) else EXIT_RANK_FAILED


SHM_DIR = Path("/dev/shm")


def shm_segments(master_port: int, master_addr: str = "127.0.0.1") -> list[Path]:
    """The shared-memory segments DeepSpeed's CPU all-reduce op made for the group at master_addr:port.

    Named ``deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` (deepspeed/ops/csrc/cpu/comm/shm.cpp,
    shm_initialize). DeepSpeed never unlinks them (its shared_close() is never called), so every TP start
    on the CPU left ~70 MB per rank in /dev/shm until the machine ran out of memory.
    """
    return sorted(SHM_DIR.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_{master_addr}_{master_port}_*"))


def remove_shm_segments(master_port: int) -> None:
    """Unlink the group's segments once its ranks are gone (a mapping still open stays valid until unmapped)."""
    for path in shm_segments(master_port):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def run_ranks(tp_size: int, serve_argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Start `tp_size` ranks of `python -m inference <serve_argv>` and supervise them."""
    base = os.environ if environ is None else environ
    port = free_port()
    command = rank_command(serve_argv)
    try:
        return Supervisor([command] * tp_size,
                          [rank_environment(base, rank, tp_size, port) for rank in range(tp_size)]).run()
    finally:
        remove_shm_segments(port)


def exit_now(code: int) -> None:
    """Exit a rank that is done, skipping interpreter teardown: a library may have left a non-daemon
    thread behind (a hung process never restarts), and tearing down a process group whose C++ threads
    still run can abort the process ("terminate called without an active exception", seen once on a
    follower that had finished cleanly)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
