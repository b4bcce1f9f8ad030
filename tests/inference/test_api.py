"""The OpenAI-compatible API end to end: the official `openai` client against `python -m inference
serve` (real engine, real tiny Llama model, uvicorn on 127.0.0.1), one server for the module."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.inference.fakes import free_port, load_tokenizer

pytestmark = pytest.mark.slow

MAX_MODEL_LEN = 256
REPO = Path(__file__).resolve().parents[2]


def start_server(model_dir: Path, port: int, *extra: str, log_path: Path | None = None) -> subprocess.Popen:
    """`python -m inference serve` on 127.0.0.1:port with the tiny model (fp32 on CPU)."""
    cmd = [sys.executable, "-m", "inference", "serve", "--model-dir", str(model_dir), "--port", str(port),
           "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--max-batch-size", "16", *extra]
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 (closed by the OS at exit)
    return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 120.0) -> None:
    """Poll /ready until 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode} before it was ready"
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server not ready in time")


def stop_server(proc: subprocess.Popen) -> int:
    """SIGTERM and wait; kills after 30 s so a broken drain cannot hang the suite."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def serving(model_dir: Path, log_dir: Path, *extra: str) -> Iterator[str]:
    """An unauthenticated server for the block: yields its URL, then drains it (exit 0 required)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(model_dir, port, "--allow-unauthenticated", *extra, log_path=log_dir / "server.log")
    try:
        wait_ready(proc, url)
        yield url
    finally:
        assert stop_server(proc) == 0


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tiny_model_dir, tmp_path_factory.mktemp("api")) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    # The server runs unauthenticated here; the client still needs some key string.
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # noqa: ANN201 (a transformers tokenizer)
    return load_tokenizer(tiny_model_dir)


def test_models_lists_the_served_model(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [tiny_model_dir.name]


def test_completion_returns_text_and_exact_usage(client: openai.OpenAI, model: str, tokenizer) -> None:
    prompt = "The platform serves language models"
    result = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0,
                                       extra_body={"ignore_eos": True})
    choice = result.choices[0]
    assert result.object == "text_completion"
    assert choice.finish_reason == "length"
    assert choice.text
    assert result.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert result.usage.completion_tokens == 12
    assert result.usage.total_tokens == result.usage.prompt_tokens + 12


def test_streamed_completion_equals_the_whole_one_and_ends_with_usage(client: openai.OpenAI, model: str) -> None:
    args = dict(model=model, prompt="Rank zero schedules", max_tokens=16, temperature=0,
                extra_body={"ignore_eos": True})
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    # OpenAI's include_usage: one last chunk with no choices and the usage.
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 16
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_continuous_usage_stats_count_every_chunk_so_far(client: openai.OpenAI, model: str, endpoint: str) -> None:
    # vLLM's stream_options.continuous_usage_stats: the gateway charges a stream its client left
    # mid-way from the last chunk it saw, so each chunk's count must be the tokens generated so far.
    opts = {"include_usage": True, "continuous_usage_stats": True}
    if endpoint == "completions":
        chunks = list(client.completions.create(model=model, prompt="Metered streams", max_tokens=12,
                                                temperature=0, extra_body={"ignore_eos": True}, stream=True,
                                                stream_options=opts))
        text_chunks = [c for c in chunks if c.choices and c.choices[0].text]
    else:
        chunks = list(client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Metered streams"}], max_completion_tokens=12,
            temperature=0, extra_body={"ignore_eos": True}, stream=True, stream_options=opts))
        text_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert all(c.usage is not None for c in chunks)
    counts = [c.usage.completion_tokens for c in text_chunks]
    assert counts == sorted(counts) and counts[-1] <= 12 and counts[0] >= 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(c.usage.prompt_tokens == chunks[-1].usage.prompt_tokens for c in chunks)
    # Without the flag, content chunks carry no usage (OpenAI's shape).
    plain = list(client.completions.create(model=model, prompt="Metered streams", max_tokens=4, temperature=0,
                                           stream=True, stream_options={"include_usage": True}))
    assert all(c.usage is None for c in plain[:-1])


def test_prompt_as_token_ids_equals_the_string_prompt(client: openai.OpenAI, model: str, tokenizer) -> None:
    prompt = "Tensor parallelism splits attention heads"
    by_text = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
    by_ids = client.completions.create(model=model, prompt=tokenizer.encode(prompt), max_tokens=8,
                                       temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage == by_text.usage


def test_stop_string_cuts_the_text_and_ends_generation(client: openai.OpenAI, model: str) -> None:
    args = dict(model=model, prompt="Each step reads every weight once", temperature=0, max_tokens=40,
                extra_body={"ignore_eos": True})
    full = client.completions.create(**args).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    cut_at = full.index(stop)
    for stream in (False, True):
        if stream:
            chunks = list(client.completions.create(**args, stop=[stop], stream=True))
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            finish = chunks[-1].choices[0].finish_reason
            usage = chunks[-1].usage  # without include_usage the finishing chunk carries it
        else:
            result = client.completions.create(**args, stop=stop)
            text, finish, usage = result.choices[0].text, result.choices[0].finish_reason, result.usage
        assert text == full[:cut_at]
        assert finish == "stop"
        assert usage.completion_tokens < 40  # the engine stopped at the stop string, not max_tokens


def test_chat_completion_and_its_stream_agree(client: openai.OpenAI, model: str) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a rank?"}]
    whole = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=10,
                                           temperature=0)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens <= 10
    chunks = list(client.chat.completions.create(model=model, messages=messages, max_completion_tokens=10,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_seeded_sampling_is_reproducible(client: openai.OpenAI, model: str) -> None:
    args = dict(model=model, prompt="Questions? Answers!", max_tokens=16, temperature=1.0, top_p=0.9,
                extra_body={"ignore_eos": True})
    first = client.completions.create(**args, seed=1234).choices[0].text
    again = client.completions.create(**args, seed=1234).choices[0].text
    assert first == again


def test_sixteen_concurrent_requests_equal_their_unbatched_runs(server: str, model: str) -> None:
    prompts = [f"Request number {i} asks about batch slot {i * 7}" for i in range(16)]
    args = dict(model=model, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})

    async def run() -> tuple[list[str], list[str], int]:
        client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)
        alone = [(await client.completions.create(prompt=p, **args)).choices[0].text for p in prompts]
        peak = 0

        async def watch_running() -> None:
            nonlocal peak
            async with httpx.AsyncClient(base_url=server) as http:
                while True:
                    for line in (await http.get("/metrics")).text.splitlines():
                        if line.startswith("vllm:num_requests_running{"):
                            peak = max(peak, int(float(line.rsplit(" ", 1)[1])))
                    await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch_running())
        together = await asyncio.gather(*(client.completions.create(prompt=p, **args) for p in prompts))
        watcher.cancel()
        assert all(r.usage.completion_tokens == 24 for r in together)
        return alone, [r.choices[0].text for r in together], peak

    alone, together, peak = asyncio.run(run())
    assert together == alone
    assert peak > 1, "the concurrent requests never shared a batch"


def test_metrics_use_vllm_names_and_count_requests(server: str, client: openai.OpenAI, model: str) -> None:
    client.completions.create(model=model, prompt="count me", max_tokens=3, temperature=0,
                              extra_body={"ignore_eos": True})
    text = httpx.get(f"{server}/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    label = f'{{model_name="{model}"}}'
    for histogram in ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                      "vllm:e2e_request_latency_seconds"):
        assert samples[f"{histogram}_count{label}"] >= 1
    assert samples[f"vllm:prompt_tokens_total{label}"] > 0
    assert samples[f"vllm:generation_tokens_total{label}"] >= 3
    assert samples[f'vllm:request_success_total{{finished_reason="length",model_name="{model}"}}'] >= 1
    assert f"vllm:num_requests_running{label}" in samples
    assert f"vllm:num_requests_waiting{label}" in samples


def _samples(server: str) -> dict[str, float]:
    samples = {}
    for line in httpx.get(f"{server}/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_kv_cache_metrics_use_vllm_names_and_count_prefix_hits(server: str, client: openai.OpenAI,
                                                               model: str) -> None:
    label = f'{{model_name="{model}"}}'
    before = _samples(server)
    prompt = [11 + i % 50 for i in range(80)]  # 5 full 16-token blocks: a repeat finds 4 of them cached
    for _ in range(2):
        client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0)
    after = _samples(server)
    assert 0.0 <= after[f"vllm:kv_cache_usage_perc{label}"] <= 1.0
    assert after[f"vllm:prefix_cache_queries_total{label}"] - before[f"vllm:prefix_cache_queries_total{label}"] >= 160
    hits = after[f"vllm:prefix_cache_hits_total{label}"] - before[f"vllm:prefix_cache_hits_total{label}"]
    assert hits >= 64  # the second request's cached blocks (the last prompt token is always computed)
    assert f"vllm:num_preemptions_total{label}" in after


def test_context_overflow_on_the_real_engine_is_a_400(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.completions.create(model=model, prompt=[5] * MAX_MODEL_LEN, max_tokens=1)
    assert excinfo.value.body["code"] == "context_length_exceeded"
    # And the server keeps serving.
    assert client.completions.create(model=model, prompt="ok", max_tokens=1).usage.completion_tokens == 1
