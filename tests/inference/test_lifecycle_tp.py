"""Process side of tensor parallelism, end to end: `python -m inference serve --tp-size 2` runs the
ranks under the DeepSpeed launcher (2 CPU ranks, gloo), drains on SIGTERM and exits 0, and exits
non-zero when a follower rank dies. The engine's own TP tests live with the engine."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.inference.fakes import free_port
from tests.inference.test_api import start_server, stop_server, wait_ready

pytestmark = pytest.mark.slow


def rank_process(supervisor_pid: int, rank: int) -> psutil.Process:
    """The process of one rank among the supervisor's descendants (by its RANK variable)."""
    for child in psutil.Process(supervisor_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "inference" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    raise AssertionError(f"no rank {rank} process under {supervisor_pid}")


def running_requests(url: str) -> int:
    """The vllm:num_requests_running gauge."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("vllm:num_requests_running{"):
            return int(float(line.rsplit(" ", 1)[1]))
    raise AssertionError("no running gauge in /metrics")


@pytest.fixture()
def tp_server(tiny_model_dir: Path, tmp_path: Path) -> Iterator[tuple[object, str, Path]]:
    port = free_port()
    log_path = tmp_path / "server.log"
    proc = start_server(tiny_model_dir, port, "--tp-size", "2", "--allow-unauthenticated",
                        "--drain-timeout", "30", log_path=log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, timeout=180)
        yield proc, url, log_path
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            stop_server(proc)


def test_tp2_serves_and_drains_a_request_in_flight_on_sigterm(tp_server: tuple) -> None:
    proc, url, _ = tp_server
    greedy = {"prompt": "The platform", "max_tokens": 8, "temperature": 0}
    assert httpx.post(f"{url}/v1/completions", json=greedy, timeout=60).status_code == 200

    result: dict[str, httpx.Response] = {}
    long_request = {"prompt": "Drain this", "max_tokens": 200, "temperature": 0, "ignore_eos": True}
    worker = threading.Thread(target=lambda: result.update(
        r=httpx.post(f"{url}/v1/completions", json=long_request, timeout=120)))
    worker.start()
    deadline = time.monotonic() + 30
    while running_requests(url) == 0:
        assert time.monotonic() < deadline, "request never started running"
        time.sleep(0.01)

    proc.send_signal(signal.SIGTERM)  # to the supervisor, as Kubernetes does to PID 1
    worker.join(120)
    assert result["r"].status_code == 200
    assert result["r"].json()["usage"]["completion_tokens"] == 200
    assert proc.wait(60) == 0


def test_tp2_follower_death_makes_the_server_exit_non_zero(tp_server: tuple) -> None:
    proc, url, log_path = tp_server
    follower = rank_process(proc.pid, 1)
    follower.send_signal(signal.SIGKILL)
    started = time.monotonic()
    code = proc.wait(90)
    assert code != 0
    assert time.monotonic() - started < 60  # exits instead of hanging on a dead collective
