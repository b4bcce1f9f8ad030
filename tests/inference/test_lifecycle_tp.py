"""Process side of tensor parallelism, end to end: `python -m inference serve --tp-size 2` runs the
ranks under its supervisor (2 CPU ranks over gloo; DeepSpeed's shm all-reduce where it is built), drains on SIGTERM and
exits 0, and when a follower rank dies fails every request with an error body and exits non-zero.
The engine's own TP tests live with the engine."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from inference import shm_op
from tests.inference.fakes import free_port
from tests.inference.test_api import REPO, start_server, stop_server, wait_ready

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


class Client(threading.Thread):
    """One completion (streamed or not) in the background; keeps what came back or what broke."""

    def __init__(self, url: str, stream: bool) -> None:
        super().__init__(daemon=True)
        self.url, self.stream = url, stream
        self.lines: list[str] = []
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        body = {"prompt": "Keep going", "max_tokens": 200, "temperature": 0, "ignore_eos": True,
                "stream": self.stream}
        try:
            with httpx.stream("POST", f"{self.url}/v1/completions", json=body, timeout=120) as response:
                self.response = response
                for line in response.iter_lines():
                    if line:
                        self.lines.append(line.removeprefix("data: "))
        except BaseException as exc:  # reported by the test
            self.error = exc


# A follower's death must end the replica within this (the supervisor polls every 50 ms, rank 0
# exits ~3 s after failing its requests); generous for a busy 2-core machine, and well below the
# ~31 s (DeepSpeed launcher's SIGTERM, 30 s, SIGKILL) of the runs that went wrong.
RANK_DEATH_EXIT_BOUND_S = 20


@pytest.mark.parametrize("run", [1, 2])
def test_tp2_follower_death_fails_every_request_in_band_and_exits_non_zero(tp_server: tuple, run: int) -> None:
    proc, url, log_path = tp_server
    stream, whole = Client(url, stream=True), Client(url, stream=False)
    stream.start()
    whole.start()
    deadline = time.monotonic() + 60
    while running_requests(url) < 2 or len(stream.lines) < 2:
        assert time.monotonic() < deadline, "requests never started running"
        time.sleep(0.01)

    # Force the ordering of the failed runs: rank 0 is inside a collective with the follower when
    # it dies (SIGSTOP first, so the follower cannot finish the step rank 0 is waiting in).
    follower = rank_process(proc.pid, 1)
    follower.suspend()
    count = len(stream.lines)
    time.sleep(0.5)
    while len(stream.lines) != count:  # tokens stopped: rank 0 is stuck waiting for the follower
        count = len(stream.lines)
        time.sleep(0.5)
    follower.kill()
    killed = time.monotonic()
    code = proc.wait(RANK_DEATH_EXIT_BOUND_S + 60)
    elapsed = time.monotonic() - killed
    stream.join(30)
    whole.join(30)

    print(f"follower killed: exit {code} after {elapsed:.1f}s")
    assert code != 0
    assert elapsed < RANK_DEATH_EXIT_BOUND_S
    assert stream.error is None, f"stream cut without an error body: {stream.error!r}"
    assert json.loads(stream.lines[-2])["error"]["code"] == "engine_unavailable"
    assert stream.lines[-1] == "[DONE]"
    assert whole.error is None, f"no response: {whole.error!r}"
    assert whole.response is not None and whole.response.status_code == 503
    assert json.loads(whole.lines[0])["error"]["code"] == "engine_unavailable"


def test_tp2_without_a_built_shm_op_serves_over_gloo_and_says_how_to_build_it(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # INFERFORGE_SHM_OP=auto (the default) never compiles at start: a cold build ran past 10 minutes
    # on a busy CI machine. With nothing built, TP runs on torch.distributed's all-reduce instead.
    extensions = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    monkeypatch.delenv(shm_op.MODE_ENV, raising=False)
    port = free_port()
    log_path = tmp_path / "server.log"
    proc = start_server(tiny_model_dir, port, "--tp-size", "2", "--allow-unauthenticated", log_path=log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, timeout=180)
        greedy = {"prompt": "The platform", "max_tokens": 4, "temperature": 0}
        assert httpx.post(f"{url}/v1/completions", json=greedy, timeout=60).status_code == 200
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
        stop_server(proc)
    logs = log_path.read_text()
    assert "all-reduces over gloo, without DeepSpeed's shm op" in logs
    assert "python -m inference.shm_op build" in logs
    assert not (extensions / shm_op.OP_NAME / f"{shm_op.OP_NAME}.so").exists()


def test_a_bad_shm_op_mode_exits_2_naming_the_variable_and_the_choices(tiny_model_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shm_op.MODE_ENV, "sometimes")
    result = subprocess.run([sys.executable, "-m", "inference", "serve", "--model-dir", str(tiny_model_dir),
                             "--tp-size", "2", "--allow-unauthenticated", "--dtype", "float32"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "INFERFORGE_SHM_OP='sometimes' is not one of auto, build, off" in result.stderr
    assert "Traceback" not in result.stderr


def test_tp2_start_waiting_on_a_live_build_lock_gives_up_at_the_bound_naming_it(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another process (outside inferforge) holds torch's build lock and never lets go.
    build_dir = tmp_path / "torch_extensions" / shm_op.OP_NAME
    build_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import os, sys, time; "
                               f"os.open({str(build_dir / 'lock')!r}, os.O_CREAT | os.O_EXCL); "
                               "print('held', flush=True); time.sleep(300)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(build_dir.parent))
    monkeypatch.setenv(shm_op.TIMEOUT_ENV, "3")
    monkeypatch.setenv(shm_op.MODE_ENV, "build")
    log_path = tmp_path / "server.log"
    proc = start_server(tiny_model_dir, free_port(), "--tp-size", "2", "--allow-unauthenticated", log_path=log_path)
    try:
        code = proc.wait(120)  # the bound is 3 s; generous for two torch imports on a busy machine
    finally:
        if proc.poll() is None:
            proc.kill()
        holder.kill()
        holder.wait()
    logs = log_path.read_text()
    assert code == 1
    assert "start-up wait timed out" in logs
    assert f"torch's lock {build_dir / 'lock'}, held by process(es) [{holder.pid}]" in logs
