"""The HTTP path against a tiny OpenAI-compatible stand-in on 127.0.0.1 (no timing asserted)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from transformers import AutoTokenizer

from inference.bench.cli import main
from inference.bench.client import CompletionSettings
from inference.bench.compare import (
    launched_server,
    median_across_rounds,
    median_ratios,
    server_argv,
    throughput_ratios,
)
from inference.bench.errors import BenchmarkError
from inference.bench.loadgen import LoadConfig, run_load
from inference.bench.workload import Prompt

API_KEY = "test-key"


@dataclass
class StandIn:
    """Behaviour knobs and a record of what the stand-in received."""

    url: str = ""
    short_by: int = 0  # return this many fewer tokens than max_tokens (a server ignoring ignore_eos)
    send_usage: bool = True
    bodies: list[dict] = field(default_factory=list)


def make_app(state: StandIn) -> Starlette:
    async def ready(_: Request) -> Response:
        return JSONResponse({"status": "ready"})

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

    async def completions(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            err = {"message": "invalid API key", "type": "authentication_error", "code": "invalid_api_key"}
            return JSONResponse({"error": err}, status_code=401)
        body = await request.json()
        state.bodies.append(body)
        n = body["max_tokens"] - state.short_by

        async def events() -> AsyncIterator[str]:
            for i in range(n):
                chunk = {"object": "text_completion", "choices": [{"index": 0, "text": f" t{i}"}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(0)
            if state.send_usage:
                usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": n}
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/ready", ready),
            Route("/v1/models", models),
            Route("/v1/completions", completions, methods=["POST"]),
        ]
    )


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    state = StandIn()
    # Bind first so the port is known before uvicorn runs; early connections wait in the backlog.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(make_app(state), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield state
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def prompts(n: int, length: int = 8) -> list[Prompt]:
    return [
        Prompt(list(range(10 + i, 10 + i + length)), length, list(range(10 + i, 10 + i + length))) for i in range(n)
    ]


def config(state: StandIn, **overrides) -> LoadConfig:
    settings = CompletionSettings(model="stand-in", output_len=overrides.pop("output_len", 5))
    return LoadConfig(base_url=state.url, settings=settings, api_key=API_KEY, **overrides)


def test_requests_carry_fixed_max_tokens_ignore_eos_greedy_and_streamed_usage(stand_in):
    asyncio.run(run_load(config(stand_in, max_concurrency=2), prompts(3)))
    body = stand_in.bodies[0]
    assert body["max_tokens"] == 5
    assert body["ignore_eos"] is True
    assert body["temperature"] == 0.0
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert sorted(b["prompt"] for b in stand_in.bodies) == [p.prompt for p in prompts(3)]


def test_every_streamed_chunk_after_the_first_gives_one_itl_sample(stand_in):
    run = asyncio.run(run_load(config(stand_in, max_concurrency=4, output_len=6), prompts(8)))
    assert run.metrics.completed == 8
    assert run.metrics.failed == 0
    assert all(len(r.itl_s) == 5 for r in run.results)
    assert run.metrics.latencies["itl"].count == 8 * 5
    assert run.metrics.total_output_tokens == 8 * 6
    assert run.metrics.total_input_tokens == 8 * 8
    assert run.metrics.output_len_mismatches == 0
    assert all(0 < r.ttft_s <= r.latency_s for r in run.results)


def test_warmup_requests_are_sent_but_not_measured(stand_in):
    run = asyncio.run(run_load(config(stand_in, warmup=3), prompts(4)))
    assert len(stand_in.bodies) == 3 + 4
    assert len(run.results) == 4


def test_outputs_shorter_than_max_tokens_are_reported_as_mismatches(stand_in):
    stand_in.short_by = 2
    run = asyncio.run(run_load(config(stand_in, output_len=6), prompts(3)))
    assert run.metrics.completed == 3
    assert run.metrics.output_len_mismatches == 3
    assert {r.output_len for r in run.results} == {4}


def test_without_usage_the_output_length_is_the_number_of_streamed_chunks(stand_in):
    stand_in.send_usage = False
    run = asyncio.run(run_load(config(stand_in, output_len=7), prompts(2)))
    assert [r.output_len for r in run.results] == [7, 7]


def test_http_errors_count_as_failures_with_the_servers_message(stand_in):
    bad_key = LoadConfig(
        base_url=stand_in.url, settings=CompletionSettings("stand-in", 4), api_key="wrong", max_concurrency=2
    )
    run = asyncio.run(run_load(bad_key, prompts(3)))
    assert run.metrics.completed == 0
    assert run.metrics.failed == 3
    assert run.metrics.errors == ["HTTP 401: invalid API key"] * 3


def test_a_run_that_exceeds_its_time_bound_cancels_open_requests_as_failures(stand_in):
    # Poisson arrivals at 0.001 req/s put the second request far beyond a 1 s run bound.
    run = asyncio.run(run_load(config(stand_in, request_rate=0.001, run_timeout_s=1.0, seed=1), prompts(2)))
    assert run.metrics.completed == 1
    assert run.metrics.failed == 1
    assert run.results[1].error.startswith("cancelled")


def test_unreachable_server_is_a_clear_error_not_a_traceback(tiny_model_dir: Path, capsys):
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(
        [
            "serve",
            "--base-url",
            f"http://127.0.0.1:{port}",
            "--tokenizer",
            str(tiny_model_dir),
            "--ready-timeout",
            "1",
            "--num-prompts",
            "2",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not ready after 1s" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--request-rate", "0"], "--request-rate: expected requests/s > 0 or 'inf'"),
        (["--max-concurrency", "0"], "--max-concurrency: expected a whole number >= 1"),
        (["--input-len", "many"], "--input-len: expected a whole number >= 1, got 'many'"),
        (["--percentiles", "50,101"], "percentiles must lie within [0, 100]"),
        (["--base-url", "localhost:8000"], "expected an http:// or https:// URL"),
        (["--prompt-format", "bytes"], "invalid choice: 'bytes'"),
    ],
)
def test_bad_arguments_name_the_option_and_what_is_allowed(tiny_model_dir: Path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--tokenizer", str(tiny_model_dir), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_command_writes_a_json_result_with_config_machine_and_vllm_style_metrics(
    stand_in, tiny_model_dir: Path, tmp_path: Path, capsys
):
    out = tmp_path / "result.json"
    code = main(
        [
            "serve",
            "--base-url",
            stand_in.url,
            "--api-key",
            API_KEY,
            "--tokenizer",
            str(tiny_model_dir),
            "--input-len",
            "12",
            "--output-len",
            "4",
            "--num-prompts",
            "6",
            "--max-concurrency",
            "3",
            "--warmup",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "Successful requests:" in table and "P99 ITL (ms):" in table
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "serve"
    assert doc["config"]["input_len"] == 12
    assert doc["load"]["max_concurrency"] == 3
    assert doc["load"]["settings"]["model"] == "stand-in"  # resolved from /v1/models
    assert "api_key" not in doc["load"]
    assert {"cpu_count", "platform", "python"} <= doc["machine"].keys()
    metrics = doc["metrics"]
    assert metrics["completed"] == 6 and metrics["failed"] == 0
    assert metrics["total_input_tokens"] == 6 * 12
    assert metrics["total_output_tokens"] == 6 * 4
    assert not math.isnan(metrics["p99_tpot_ms"])
    assert len(doc["requests"]["itls"]) == 6
    # The prompts were token ids of exactly --input-len, free of special tokens.
    sent = stand_in.bodies[1:]
    assert all(len(b["prompt"]) == 12 for b in sent)
    special = set(AutoTokenizer.from_pretrained(tiny_model_dir).all_special_ids)
    assert all(special.isdisjoint(b["prompt"]) for b in sent)


def test_compare_runs_hf_baselines_and_the_server_on_the_same_prompts_and_reports_ratios(
    stand_in, tiny_model_dir: Path, tmp_path: Path, capsys
):
    out = tmp_path / "compare.json"
    code = main(
        [
            "compare",
            "--base-url",
            stand_in.url,
            "--api-key",
            API_KEY,
            "--model-dir",
            str(tiny_model_dir),
            "--dtype",
            "float32",
            "--threads",
            "1",
            "--input-len",
            "6",
            "--output-len",
            "3",
            "--num-prompts",
            "4",
            "--max-concurrency",
            "4",
            "1",
            "--warmup",
            "0",
            "--rounds",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["config"]["rounds"] == 2 and len(doc["rounds"]) == 2
    for one in doc["rounds"]:
        assert set(one["baselines"]) == {"hf_one_at_a_time", "hf_padded_batch"}
        assert set(one["ours"]) == {"ours_c4", "ours_c1"}
        for baseline in one["baselines"].values():
            # ignore-eos semantics in HF too: exactly output_len tokens for every prompt.
            assert baseline["completed"] == 4
            assert baseline["total_output_tokens"] == 4 * 3
            assert baseline["output_len_mismatches"] == 0
        expected = (
            one["ours"]["ours_c4"]["metrics"]["output_throughput"]
            / one["baselines"]["hf_padded_batch"]["output_throughput"]
        )
        assert one["ratios"]["ours_c4"]["hf_padded_batch"] == pytest.approx(expected)
    # Every server run got the very prompts HF generated from.
    sent = [b["prompt"] for b in stand_in.bodies]
    assert len(sent) == 4 * 4
    assert all(sorted(sent[i : i + 4]) == sorted(sent[:4]) for i in range(0, 16, 4))
    per_round = [one["ratios"]["ours_c1"]["hf_one_at_a_time"] for one in doc["rounds"]]
    median = doc["summary"]["median_ratios"]["output_throughput"]["ours_c1"]["hf_one_at_a_time"]
    assert median == pytest.approx(sum(per_round) / 2)
    assert "median of paired per-round ratios" in capsys.readouterr().out


def test_medians_across_rounds_are_taken_per_system_and_metric_skipping_missing_values():
    rounds = [
        {"ours": {"output_throughput": 100.0, "p99_ttft_ms": None, "errors": []}},
        {"ours": {"output_throughput": 300.0, "p99_ttft_ms": 5.0, "errors": []}},
        {"ours": {"output_throughput": 200.0, "p99_ttft_ms": 7.0, "errors": []}, "hf": {"output_throughput": 1.0}},
    ]
    medians = median_across_rounds(rounds)
    assert medians["ours"]["output_throughput"] == 200.0
    assert medians["ours"]["p99_ttft_ms"] == 6.0
    assert "errors" not in medians["ours"]
    assert medians["hf"] == {"output_throughput": 1.0}


def test_the_summary_ratio_is_the_median_of_paired_round_ratios_not_a_ratio_of_medians():
    # Round 1 both sides slow (machine busy), round 2 both fast, round 3 mixed.
    per_round = [
        {"ours_c64": {"hf_padded_batch": 1.2}},
        {"ours_c64": {"hf_padded_batch": 1.1}},
        {"ours_c64": {"hf_padded_batch": None}},
        {"ours_c64": {"hf_padded_batch": 3.0}},
    ]
    assert median_ratios(per_round) == {"ours_c64": {"hf_padded_batch": pytest.approx(1.2)}}


def test_launched_server_runs_in_its_own_process_group_and_is_stopped_afterwards(tmp_path: Path):
    command = f"{sys.executable} -c 'import time; time.sleep(120)'"
    with launched_server(command, tmp_path / "server.log", threads=1) as is_alive:
        assert is_alive()
        pid = next(iter(_children_of(os.getpid())))
    assert not is_alive()
    assert pid not in _children_of(os.getpid())


def test_a_server_command_that_cannot_start_is_a_clear_error(tmp_path: Path):
    with pytest.raises(BenchmarkError, match="cannot start the server"):
        with launched_server("/nonexistent/serve --port 1", tmp_path / "server.log", threads=None):
            pass


def test_throughput_ratios_divide_ours_by_each_baseline_and_tolerate_zero():
    ratios = throughput_ratios(
        {"ours_c64": {"output_throughput": 1200.0}},
        {"hf_padded_batch": {"output_throughput": 1000.0}, "broken": {"output_throughput": 0.0}},
    )
    assert ratios == {"ours_c64": {"hf_padded_batch": pytest.approx(1.2), "broken": None}}


def _children_of(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(c) for c in children}


def test_a_bare_python_in_the_server_command_runs_under_the_harness_interpreter():
    assert server_argv("python -m inference serve --port 8000") == [
        sys.executable,
        "-m",
        "inference",
        "serve",
        "--port",
        "8000",
    ]
    assert server_argv("/opt/other/bin/python -m x")[0] == "/opt/other/bin/python"
    with pytest.raises(BenchmarkError, match="empty"):
        server_argv("  ")
