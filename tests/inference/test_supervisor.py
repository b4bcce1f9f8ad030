"""The TP supervisor (inference/supervisor.py) with stand-in ranks (tests/inference/fake_rank.py):
a rank death reaches rank 0 as SIGUSR1, never as the drain's SIGTERM, in whichever order it meets
a stop signal, and every way out is bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from inference import supervisor
from inference.supervisor import rank_command, rank_environment

REPO = Path(__file__).resolve().parents[2]
# Generous bound on "promptly": the supervisor polls every 50 ms and rank 0 exits at once here.
PROMPT_S = 8.0


def start(tmp_path: Path, follower_mode: str, rank0_mode: str = "stuck") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tests.inference.fake_rank", "supervise", str(tmp_path),
                             follower_mode, rank0_mode], cwd=REPO)
    deadline = time.monotonic() + 60
    while not (tmp_path / "rank0.ready").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "fake rank 0 did not start"
        time.sleep(0.01)
    return proc


def signals_of_rank0(tmp_path: Path) -> list[str]:
    path = tmp_path / "rank0.signals"
    return path.read_text().split() if path.exists() else []


def wait_exit(proc: subprocess.Popen, bound_s: float) -> tuple[int, float]:
    started = time.monotonic()
    try:
        code = proc.wait(bound_s + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, time.monotonic() - started


def test_a_dead_follower_is_reported_to_rank_0_as_a_rank_death_not_a_drain(tmp_path: Path) -> None:
    proc = start(tmp_path, "dies")
    (tmp_path / "die").touch()
    code, elapsed = wait_exit(proc, PROMPT_S)
    assert code == 1
    assert signals_of_rank0(tmp_path) == ["SIGUSR1"]
    assert elapsed < PROMPT_S


def test_a_follower_dying_during_a_stuck_drain_still_ends_the_replica_at_once(tmp_path: Path) -> None:
    # The order of the failed runs: rank 0 already got SIGTERM and is draining, stuck in a collective.
    proc = start(tmp_path, "dies")
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while signals_of_rank0(tmp_path) != ["SIGTERM"]:
        assert time.monotonic() < deadline, "SIGTERM never reached rank 0"
        time.sleep(0.01)
    (tmp_path / "die").touch()
    code, elapsed = wait_exit(proc, PROMPT_S)
    assert code == 1
    assert signals_of_rank0(tmp_path) == ["SIGTERM", "SIGUSR1"]
    assert elapsed < PROMPT_S


def test_sigterm_goes_to_rank_0_only_and_a_clean_drain_exits_0(tmp_path: Path) -> None:
    proc = start(tmp_path, "released", rank0_mode="drains")
    proc.send_signal(signal.SIGTERM)
    code, _ = wait_exit(proc, PROMPT_S)
    assert code == 0
    assert signals_of_rank0(tmp_path) == ["SIGTERM"]


def test_a_rank_0_that_does_not_exit_after_a_rank_death_is_killed_within_the_bound(tmp_path: Path) -> None:
    proc = start(tmp_path, "dies", rank0_mode="hung")
    (tmp_path / "die").touch()
    code, elapsed = wait_exit(proc, supervisor.RANK_LOST_EXIT_S + PROMPT_S)
    assert code == 1
    assert signals_of_rank0(tmp_path) == ["SIGUSR1"]
    assert elapsed < supervisor.RANK_LOST_EXIT_S + PROMPT_S


def test_ranks_get_the_deepspeed_launcher_variables_and_the_same_serve_command() -> None:
    env = rank_environment({"PATH": "/bin"}, rank=1, world_size=2, master_port=29500)
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500"}
    assert env["PATH"] == "/bin" and int(env["OMP_NUM_THREADS"]) >= 1
    assert rank_environment({"OMP_NUM_THREADS": "3"}, 0, 2, 1)["OMP_NUM_THREADS"] == "3"
    cmd = rank_command(["serve", "--model-dir", "m", "--tp-size", "2"])
    assert cmd[1:] == ["-u", "-m", "inference", "serve", "--model-dir", "m", "--tp-size", "2"]


def test_ranks_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    proc = start(tmp_path, "released")
    rank0 = psutil.Process(int((tmp_path / "rank0.pid").read_text()))
    proc.kill()
    proc.wait()
    rank0.wait(30)  # raises TimeoutExpired if it was orphaned instead


def test_a_group_wide_signal_reaches_only_the_supervisor(tmp_path: Path) -> None:
    # Ctrl-C in a terminal signals the whole foreground group: the follower must not die of it
    # (which would look like a rank death), rank 0 must get one SIGTERM (a drain), not two.
    proc = subprocess.Popen([sys.executable, "-m", "tests.inference.fake_rank", "supervise", str(tmp_path),
                             "released", "drains"], cwd=REPO, process_group=0)
    deadline = time.monotonic() + 60
    while not (tmp_path / "rank0.ready").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    code, _ = wait_exit(proc, PROMPT_S)
    assert code == 0
    assert signals_of_rank0(tmp_path) == ["SIGTERM"]


def test_the_groups_deepspeed_shm_segments_are_unlinked_when_the_ranks_are_gone(monkeypatch) -> None:
    # DeepSpeed's CPU all-reduce op creates one /dev/shm segment per rank and never unlinks it.
    made: list[Path] = []
    other = supervisor.SHM_DIR / f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_1_0"  # another group's

    class RanksThatMadeSegments:
        def __init__(self, commands, environments) -> None:
            self.environments = environments

        def run(self) -> int:
            for env in self.environments:
                path = supervisor.SHM_DIR / (f"deepspeed_allreduce_buffer_{os.getuid()}_{env['MASTER_ADDR']}_"
                                             f"{env['MASTER_PORT']}_{env['RANK']}")
                path.write_bytes(b"\0" * 64)
                made.append(path)
            return 0

    other.write_bytes(b"\0")
    monkeypatch.setattr(supervisor, "Supervisor", RanksThatMadeSegments)
    try:
        assert supervisor.run_ranks(2, ["serve"], environ={}) == 0
        assert len(made) == 2 and not any(p.exists() for p in made)
        assert other.exists()
    finally:
        for path in [*made, other]:
            path.unlink(missing_ok=True)
