"""Process lifecycle through the production code path (`inference.serve.serve_app`): SIGTERM drains
in-flight requests then exits 0, the drain is bounded, a dead engine exits non-zero, and the JSON
logs carry ids, counts and timings but never prompt or output text. The engine is the scripted
FakeEngine (tests/inference/fakes.py run as a module), so timings are exact and start-up is fast."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.inference.fakes import REPLY_TEXT, free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class FakeProcess:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text()


def start_fake(model_dir: Path, tmp_path: Path, *args: str) -> FakeProcess:
    port = free_port()
    log_path = tmp_path / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.inference.fakes", "--model-dir", str(model_dir), "--port", str(port), *args],
        cwd=REPO, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, f"fake server exited early:\n{log_path.read_text()}"
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return FakeProcess(proc, url, log_path)
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "fake server not ready"
        time.sleep(0.1)


@pytest.fixture()
def processes() -> Iterator[list[FakeProcess]]:
    started: list[FakeProcess] = []
    yield started
    for p in started:  # never leave a server behind, whatever the test did
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


class StreamInFlight(threading.Thread):
    """A streamed completion read in the background; `first_chunk` is set once it is running."""

    def __init__(self, url: str, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.url, self.max_tokens = url, max_tokens
        self.first_chunk = threading.Event()
        self.events: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        body = {"prompt": "drain me", "max_tokens": self.max_tokens, "stream": True, "ignore_eos": True,
                "stream_options": {"include_usage": True}}
        try:
            with httpx.stream("POST", f"{self.url}/v1/completions", json=body, timeout=60) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if line:
                        self.events.append(line.removeprefix("data: "))
                        self.first_chunk.set()
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.first_chunk.set()

    @property
    def usage(self) -> dict:
        return json.loads(self.events[-2])["usage"]


def test_sigterm_finishes_the_request_in_flight_then_exits_0(tiny_model_dir: Path, tmp_path: Path,
                                                              processes: list[FakeProcess]) -> None:
    server = start_fake(tiny_model_dir, tmp_path, "--token-delay", "0.05", "--drain-timeout", "30")
    processes.append(server)
    stream = StreamInFlight(server.url, max_tokens=40)  # ~2 s of tokens
    stream.start()
    assert stream.first_chunk.wait(10)
    assert stream.error is None

    server.proc.send_signal(signal.SIGTERM)

    # Draining: not ready, new work refused with 503, the stream keeps going.
    deadline = time.monotonic() + 5
    while httpx.get(f"{server.url}/ready").status_code != 503:
        assert time.monotonic() < deadline, "/ready still 200 after SIGTERM"
    refused = httpx.post(f"{server.url}/v1/completions", json={"prompt": "late", "max_tokens": 2})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "draining"

    stream.join(30)
    assert stream.error is None
    assert stream.events[-1] == "[DONE]"
    assert stream.usage["completion_tokens"] == 40  # completed in full, not cut
    assert server.proc.wait(15) == 0
    assert '"message": "drained"' in server.logs()


def test_drain_is_bounded_by_the_drain_timeout(tiny_model_dir: Path, tmp_path: Path,
                                               processes: list[FakeProcess]) -> None:
    server = start_fake(tiny_model_dir, tmp_path, "--token-delay", "0.05", "--drain-timeout", "1")
    processes.append(server)
    stream = StreamInFlight(server.url, max_tokens=200)  # ~10 s: longer than the drain timeout
    stream.start()
    assert stream.first_chunk.wait(10)
    assert stream.error is None

    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0
    # drain timeout (1 s) + uvicorn's bounded close of the cut connection; far below the 10 s stream.
    assert time.monotonic() - started < 8
    assert "drain timeout" in server.logs()


def test_a_second_signal_exits_at_once(tiny_model_dir: Path, tmp_path: Path,
                                       processes: list[FakeProcess]) -> None:
    server = start_fake(tiny_model_dir, tmp_path, "--token-delay", "0.05", "--drain-timeout", "60")
    processes.append(server)
    stream = StreamInFlight(server.url, max_tokens=240)  # ~12 s
    stream.start()
    assert stream.first_chunk.wait(10)
    assert stream.error is None
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # the first signal must be handled before the second arrives
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(15) == 0
    assert time.monotonic() - started < 8  # far less than the 60 s drain timeout or the 12 s stream
    assert "second signal" in server.logs()


def test_engine_death_makes_the_process_exit_non_zero(tiny_model_dir: Path, tmp_path: Path,
                                                      processes: list[FakeProcess]) -> None:
    server = start_fake(tiny_model_dir, tmp_path, "--die-after", "1.5")
    processes.append(server)
    assert server.proc.wait(20) == 1
    assert "engine failed" in server.logs()


def running_requests(url: str) -> int:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("vllm:num_requests_running{"):
            return int(float(line.rsplit(" ", 1)[1]))
    raise AssertionError("no running gauge in /metrics")


@pytest.mark.parametrize("drain_first", [False, True], ids=["rank-death", "drain-then-rank-death"])
def test_a_reported_rank_death_fails_every_request_with_an_error_body_and_exits_1(
        tiny_model_dir: Path, tmp_path: Path, processes: list[FakeProcess], drain_first: bool) -> None:
    # --hold: every request's second token never comes, as when the step loop is stuck in a
    # collective with a dead rank (the engine cannot notice by itself).
    server = start_fake(tiny_model_dir, tmp_path, "--hold", "--drain-timeout", "60")
    processes.append(server)
    stream = StreamInFlight(server.url, max_tokens=40)
    stream.start()
    assert stream.first_chunk.wait(10)
    whole: dict[str, httpx.Response | BaseException] = {}

    def post_whole() -> None:
        try:
            whole["r"] = httpx.post(f"{server.url}/v1/completions", timeout=60,
                                    json={"prompt": "stuck", "max_tokens": 40, "ignore_eos": True})
        except BaseException as exc:  # reported by the assertions below
            whole["r"] = exc

    waiting = threading.Thread(target=post_whole, daemon=True)
    waiting.start()
    deadline = time.monotonic() + 10
    while running_requests(server.url) < 2:
        assert time.monotonic() < deadline, "the second request never started"
        time.sleep(0.01)
    if drain_first:  # what DeepSpeed's launcher used to do: a drain that can never finish
        server.proc.send_signal(signal.SIGTERM)
        while httpx.get(f"{server.url}/ready").status_code != 503:
            assert time.monotonic() < deadline + 5, "/ready still 200 after SIGTERM"

    server.proc.send_signal(signal.SIGUSR1)  # the supervisor: a rank died
    started = time.monotonic()
    code = server.proc.wait(30)
    elapsed = time.monotonic() - started
    stream.join(10)
    waiting.join(10)

    assert code == 1
    assert elapsed < 8  # the bound is ~3 s (DEAD_ENGINE_GRACE_S); generous for a busy machine
    assert stream.error is None, f"stream cut without an error body: {stream.error!r}"
    assert json.loads(stream.events[-2])["error"]["code"] == "engine_unavailable"
    assert stream.events[-1] == "[DONE]"
    response = whole["r"]
    assert isinstance(response, httpx.Response), f"no response: {response!r}"
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "engine_unavailable"


def test_logs_carry_ids_counts_and_timings_but_never_text(tiny_model_dir: Path, tmp_path: Path,
                                                          processes: list[FakeProcess]) -> None:
    server = start_fake(tiny_model_dir, tmp_path)
    processes.append(server)
    secret = "zebra-confidential-prompt-4711"
    completion = httpx.post(f"{server.url}/v1/completions", json={"prompt": secret, "max_tokens": 8}).json()
    chat = httpx.post(f"{server.url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": secret}], "stream": True}).text
    rejected = httpx.post(f"{server.url}/v1/completions", json={"prompt": secret, "model": secret})
    assert rejected.status_code == 404
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0

    logs = server.logs()
    assert secret not in logs
    output_words = [w for w in REPLY_TEXT.split() if len(w) > 4]  # "platform", "serves", ...
    assert completion["choices"][0]["text"] and chat.endswith("data: [DONE]\n\n")  # text was produced
    assert not [w for w in output_words if w in logs]

    entries = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    finished = [e for e in entries if e["message"] == "request finished"]
    assert [e["request_id"] for e in finished][0] == completion["id"]
    for entry in finished:
        assert entry["prompt_tokens"] > 0 and entry["completion_tokens"] > 0
        assert entry["e2e_s"] >= entry["ttft_s"] > 0


def test_a_port_in_use_exits_1_with_the_reason_logged(tiny_model_dir: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "tests.inference.fakes", "--model-dir", str(tiny_model_dir),
             "--port", str(port)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr
