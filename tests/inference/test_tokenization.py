"""Tokenization never stalls the event loop: prompts are tokenized in worker threads, and a prompt
too long to fit the context in any tokenization is refused before any tokenization at all."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference.tokenization import PromptTokenizer, longest_token_chars
from tests.inference.fakes import fake_server, load_tokenizer
from tests.inference.test_lifecycle import FakeProcess, start_fake

# Generous: an idle server answers /health in milliseconds; tokenizing this prompt on the event loop
# took ~3 s (2 MiB) on the 2-core development machine.
HEALTH_LATENCY_BOUND_S = 1.0
PROMPT_BYTES = 2 * 1024 * 1024


def words_prompt(size: int) -> str:
    rng = random.Random(0)
    words = ["platform", "inference", "the", "server", "cluster", "a", "of", "to"]
    parts: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(words)
        parts.append(word)
        length += len(word) + 1
    return " ".join(parts)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return load_tokenizer(tiny_model_dir)


@pytest.fixture()
def long_context_server(tiny_model_dir: Path, tmp_path: Path) -> Iterator[FakeProcess]:
    """The fake engine behind the production lifecycle, with a context large enough that a 2 MiB
    prompt passes the size cap and is really tokenized."""
    server = start_fake(tiny_model_dir, tmp_path, "--max-model-len", str(PROMPT_BYTES))
    yield server
    server.proc.kill()
    server.proc.wait()


def test_health_answers_while_a_multi_mib_prompt_is_tokenized(long_context_server: FakeProcess) -> None:
    server = long_context_server
    prompt = words_prompt(PROMPT_BYTES)
    big: dict[str, httpx.Response] = {}
    worker = threading.Thread(target=lambda: big.update(r=httpx.post(
        f"{server.url}/v1/completions", json={"prompt": prompt, "max_tokens": 1}, timeout=300)))

    latencies: list[float] = []
    worker.start()
    while worker.is_alive():
        started = time.monotonic()
        assert httpx.get(f"{server.url}/health", timeout=300).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    worker.join()

    assert big["r"].status_code == 200, big["r"].text  # it was tokenized and served
    assert big["r"].json()["usage"]["prompt_tokens"] > 500_000
    print(f"/health during tokenization: {len(latencies)} probes, max {max(latencies):.3f}s")
    assert max(latencies) < HEALTH_LATENCY_BOUND_S, f"/health took {max(latencies):.2f}s"
    assert len(latencies) >= 3, "the prompt was tokenized too fast to measure anything"



@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_a_prompt_too_long_for_any_tokenization_is_refused_without_tokenizing(
        tokenizer: Any, endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_server(tokenizer) as running:
        cap = running.state.prompts.max_prompt_chars
        tokenized: list[str] = []
        real_encode = tokenizer.encode
        monkeypatch.setattr(tokenizer, "encode",
                            lambda text, **kw: tokenized.append(text) or real_encode(text, **kw))
        prompt = words_prompt(PROMPT_BYTES)
        if endpoint == "completions":
            response = httpx.post(f"{running.url}/v1/completions", json={"prompt": prompt}, timeout=60)
        else:
            response = httpx.post(f"{running.url}/v1/chat/completions", timeout=60,
                                  json={"messages": [{"role": "user", "content": prompt}]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert f"at most {cap} characters" in error["message"]
    assert running.engine.requests == []
    assert tokenized == []


def test_the_size_cap_is_context_times_the_longest_token(tokenizer: Any) -> None:
    prompts = PromptTokenizer(tokenizer, max_model_len=256)
    longest = longest_token_chars(tokenizer)
    assert longest == max(len(t) for t in tokenizer.get_vocab())
    assert prompts.max_prompt_chars == 256 * longest
    # Below the cap is the tokenizer's business: a prompt of exactly `cap` characters passes the check.
    prompts._check_chars(prompts.max_prompt_chars, "prompt")
    prompts.close()
