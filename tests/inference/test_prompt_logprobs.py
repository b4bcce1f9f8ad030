"""Prompt logprobs over HTTP, as vLLM answers them: `echo` with `logprobs` on /v1/completions (what
lm-evaluation-harness's `local-completions` sends for loglikelihood tasks), `max_tokens: 0` with echo, and the
`prompt_logprobs` extra on both completion endpoints. The real server on the tiny model; the numbers are checked
against transformers' own forward over the prompt."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.model_factory import write_model
from tests.inference.test_engine_tp import LOGITS_ATOL, free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("plp") / "model", "tiny", seed=0)


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    port = free_port()
    log = tmp_path_factory.mktemp("plp_log") / "server.log"
    # A 32-token step budget: the longer prompts below take several steps, their rows capped per step.
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference", "serve", "--model-dir", str(model_dir), "--model-name", "tiny",
         "--port", str(port), "--dtype", "float32", "--max-model-len", "128", "--max-batch-size", "4",
         "--allow-unauthenticated"],
        cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if client.get("/ready").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    yield client
    client.close()
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    """log_softmax of transformers' forward over a prompt: row i is the distribution of token i + 1."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def logprobs(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)

    return logprobs


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


TEXT = "The platform serves a model to every tenant behind the gateway"


def test_echo_with_logprobs_is_what_lm_eval_reads(server, reference, tokenizer) -> None:
    """lm-eval's loglikelihood request: echo, logprobs 1, max_tokens 1, temperature 0; it sums
    token_logprobs[ctxlen:-1] and checks greediness against top_logprobs."""
    response = server.post("/v1/completions", json={"model": "tiny", "prompt": TEXT, "max_tokens": 1,
                                                      "temperature": 0, "logprobs": 1, "echo": True, "seed": 1234})
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    ids = tokenizer(TEXT)["input_ids"]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(ids) + 1  # the prompt's tokens, then the generated one
    assert choice["text"].startswith(TEXT) and "".join(logprobs["tokens"][:len(ids)]) == tokenizer.decode(
        ids, skip_special_tokens=False)
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert logprobs["text_offset"][:3] == [0, len(logprobs["tokens"][0]),
                                           len(logprobs["tokens"][0]) + len(logprobs["tokens"][1])]
    expected = reference(ids)
    got = torch.tensor(logprobs["token_logprobs"][1:len(ids)])
    want = expected[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(got, want, atol=LOGITS_ATOL, rtol=0)
    for position in range(1, len(ids)):
        top = logprobs["top_logprobs"][position]
        # The token itself and the single most likely one (the same token where the prompt is greedy).
        assert logprobs["tokens"][position] in top and 1 <= len(top) <= 2
        best = tokenizer.decode([int(expected[position - 1].argmax())], skip_special_tokens=False)
        assert best in top
    # The generated token's logprob follows, as with echo off.
    assert logprobs["token_logprobs"][-1] == pytest.approx(float(expected[-1].max()), abs=LOGITS_ATOL)


def test_echo_without_generation_and_token_prompts(server, reference, tokenizer) -> None:
    ids = tokenizer(TEXT)["input_ids"]
    response = server.post("/v1/completions", json={"prompt": [ids, ids[:5]], "max_tokens": 0, "echo": True,
                                                      "logprobs": 0})
    assert response.status_code == 200, response.text
    first, second = response.json()["choices"]
    assert first["finish_reason"] == second["finish_reason"] == "length"
    assert first["text"] == tokenizer.decode(ids, skip_special_tokens=False)
    assert second["text"] == tokenizer.decode(ids[:5], skip_special_tokens=False)
    assert len(second["logprobs"]["token_logprobs"]) == 5
    assert response.json()["usage"] == {"prompt_tokens": len(ids) + 5, "completion_tokens": 0,
                                        "total_tokens": len(ids) + 5}
    # Echo alone (no logprobs) returns the prompt's text without computing its logprobs.
    plain = server.post("/v1/completions", json={"prompt": TEXT, "max_tokens": 2, "echo": True, "temperature": 0})
    assert plain.status_code == 200 and plain.json()["choices"][0]["text"].startswith(TEXT)
    assert plain.json()["choices"][0]["logprobs"] is None


def test_prompt_logprobs_extra_in_vllms_shape_on_both_endpoints(server, reference, tokenizer) -> None:
    ids = tokenizer(TEXT)["input_ids"]
    response = server.post("/v1/completions", json={"prompt": ids, "max_tokens": 1, "temperature": 0,
                                                      "prompt_logprobs": 2})
    assert response.status_code == 200, response.text
    entries = response.json()["choices"][0]["prompt_logprobs"]
    assert entries[0] is None and len(entries) == len(ids)
    expected = reference(ids)
    for position in range(1, len(ids)):
        token = str(ids[position])
        entry = entries[position][token]
        row = expected[position - 1]
        assert entry["logprob"] == pytest.approx(float(row[ids[position]]), abs=LOGITS_ATOL)
        assert entry["rank"] == int((row > row[ids[position]]).sum()) + 1
        assert entry["decoded_token"] == tokenizer.decode([ids[position]], skip_special_tokens=False)
        # The prompt token and the 2 most likely (ranks 1 and 2), keyed by token id.
        assert set(entries[position]) == {token} | {str(t) for t in row.topk(2).indices.tolist()}
    chat = server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello there"}],
                                                      "max_tokens": 1, "prompt_logprobs": 0})
    assert chat.status_code == 200, chat.text
    body = chat.json()
    assert body["prompt_logprobs"][0] is None
    assert all(len(position) == 1 for position in body["prompt_logprobs"][1:])  # k = 0: the token alone
    assert len(body["prompt_logprobs"]) == body["usage"]["prompt_tokens"]


def test_a_prompt_near_the_context_limit_matches_one_forward(server, reference) -> None:
    """120 of the 128 tokens (chunked over steps in tests/inference/test_engine_tp.py's probe)."""
    ids = [(7 * i) % 500 + 3 for i in range(120)]
    response = server.post("/v1/completions", json={"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0})
    assert response.status_code == 200, response.text
    got = torch.tensor(response.json()["choices"][0]["logprobs"]["token_logprobs"][1:])
    want = reference(ids)[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(got, want, atol=LOGITS_ATOL, rtol=0)


@pytest.mark.parametrize(("body", "message"), [
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens must be at least 1 (0 with echo or prompt_logprobs)"),
    ({"prompt": "hi", "echo": True, "stream": True}, "echo is not supported when stream is true"),
    ({"prompt": "hi", "prompt_logprobs": 1, "stream": True}, "prompt_logprobs is not available when stream"),
    ({"prompt": "hi", "prompt_logprobs": 21}, "prompt_logprobs"),
    ({"prompt": "hi", "max_tokens": -1, "echo": True}, "max_tokens must be at least 0"),
])
def test_bad_prompt_logprob_requests_get_a_400_naming_the_field(server, body: dict, message: str) -> None:
    response = server.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
