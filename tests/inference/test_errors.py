"""Bad input and overload: every case is a 4xx/429/503 in the OpenAI error shape, never a 500, and
the server keeps serving afterwards. Runs the real HTTP stack (uvicorn on 127.0.0.1) over the
scripted FakeEngine, which can be put into states a real model cannot be steered into."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.inference.fakes import RunningFake, fake_server, load_tokenizer

MAX_MODEL_LEN = 64


@pytest.fixture(scope="module")
def fake(tiny_model_dir: Path) -> Iterator[RunningFake]:
    with fake_server(load_tokenizer(tiny_model_dir), max_model_len=MAX_MODEL_LEN) as running:
        yield running


@pytest.fixture()
def client(fake: RunningFake) -> Iterator[httpx.Client]:
    url, engine = fake.url, fake.engine
    engine.queue_full = engine.admission_closed = engine.dead = engine.hold = False
    engine.release.clear()
    with httpx.Client(base_url=url, timeout=10) as c:
        yield c
    # Whatever the case did, the server still answers a good request.
    engine.queue_full = engine.admission_closed = engine.dead = engine.hold = False
    engine.release.set()
    with httpx.Client(base_url=url, timeout=10) as c:
        ok = c.post("/v1/completions", json={"prompt": "still serving", "max_tokens": 2})
    assert ok.status_code == 200, ok.text


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert error["code"] == code
    assert error["message"]
    return error


COMPLETION_CASES = [
    # (case id, body, expected status, expected code, words the message must contain)
    ("prompt-wrong-type", {"prompt": 5}, 400, "invalid_parameter", ["prompt", "string"]),
    ("prompt-missing", {"max_tokens": 3}, 400, "invalid_parameter", ["prompt"]),
    ("prompt-empty-token-list", {"prompt": []}, 400, "invalid_parameter", ["prompt"]),
    ("prompt-mixed-batch", {"prompt": ["a", [1]]}, 400, "invalid_parameter", ["prompt", "list of strings"]),
    ("prompt-batch-with-empty-ids", {"prompt": [[1], []]}, 400, "invalid_parameter", ["prompt"]),
    ("too-many-choices", {"prompt": ["a"] * 9, "n": 8}, 400, "invalid_parameter", ["72", "64"]),
    ("prompt-negative-token", {"prompt": [1, -3]}, 400, "invalid_parameter", ["token ids"]),
    ("prompt-token-out-of-vocab", {"prompt": [1, 10**6]}, 400, "invalid_prompt", ["1000000", "[0, 512)"]),
    ("prompt-longer-than-context", {"prompt": [5] * MAX_MODEL_LEN}, 400, "context_length_exceeded",
     [str(MAX_MODEL_LEN)]),
    ("max-tokens-zero", {"prompt": "hi", "max_tokens": 0}, 400, "invalid_max_tokens", ["at least 1"]),
    ("max-tokens-negative", {"prompt": "hi", "max_tokens": -5}, 400, "invalid_max_tokens", ["-5"]),
    ("max-tokens-beyond-context", {"prompt": [1, 2, 3], "max_tokens": MAX_MODEL_LEN}, 400,
     "context_length_exceeded", ["at most 61"]),
    ("max-tokens-string", {"prompt": "hi", "max_tokens": "16"}, 400, "invalid_parameter", ["max_tokens"]),
    ("temperature-string", {"prompt": "hi", "temperature": "hot"}, 400, "invalid_parameter", ["temperature"]),
    ("temperature-too-high", {"prompt": "hi", "temperature": 2.5}, 400, "invalid_parameter", ["temperature"]),
    ("temperature-negative", {"prompt": "hi", "temperature": -0.1}, 400, "invalid_parameter", ["temperature"]),
    ("top-p-zero", {"prompt": "hi", "top_p": 0}, 400, "invalid_parameter", ["top_p"]),
    ("top-p-above-one", {"prompt": "hi", "top_p": 1.5}, 400, "invalid_parameter", ["top_p"]),
    ("seed-float", {"prompt": "hi", "seed": 1.5}, 400, "invalid_parameter", ["seed"]),
    ("n-zero", {"prompt": "hi", "n": 0}, 400, "invalid_parameter", ["n"]),
    ("n-too-many", {"prompt": "hi", "n": 65}, 400, "invalid_parameter", ["n", "64"]),
    ("stop-not-strings", {"prompt": "hi", "stop": [1, 2]}, 400, "invalid_parameter", ["stop"]),
    ("stop-empty-string", {"prompt": "hi", "stop": [""]}, 400, "invalid_parameter", ["empty"]),
    ("stream-not-bool", {"prompt": "hi", "stream": "yes"}, 400, "invalid_parameter", ["stream"]),
    ("stream-options-without-stream", {"prompt": "hi", "stream_options": {"include_usage": True}}, 400,
     "invalid_parameter", ["stream_options"]),
    ("logprobs-too-many", {"prompt": "hi", "logprobs": 21}, 400, "invalid_parameter", ["logprobs", "20"]),
    ("logprobs-negative", {"prompt": "hi", "logprobs": -1}, 400, "invalid_parameter", ["logprobs"]),
    ("unknown-model", {"prompt": "hi", "model": "gpt-4"}, 404, "model_not_found", ["gpt-4", "fake-model"]),
]


@pytest.mark.parametrize(("body", "status", "code", "words"), [c[1:] for c in COMPLETION_CASES],
                         ids=[c[0] for c in COMPLETION_CASES])
def test_bad_completion_request_is_a_clear_openai_error(client: httpx.Client, body: dict[str, Any],
                                                        status: int, code: str, words: list[str]) -> None:
    error = assert_openai_error(client.post("/v1/completions", json=body), status, code)
    for word in words:
        assert word in error["message"]


CHAT_CASES = [
    ("messages-empty", {"messages": []}, "messages"),
    ("messages-not-list", {"messages": "hello"}, "messages"),
    ("role-unknown", {"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ("content-wrong-type", {"messages": [{"role": "user", "content": 7}]}, "content"),
    ("image-part", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
     "content"),
    ("top-logprobs-without-logprobs", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
     "top_logprobs"),
    ("top-logprobs-too-many", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True,
                               "top_logprobs": 21}, "top_logprobs"),
    ("max-completion-tokens-zero", {"messages": [{"role": "user", "content": "hi"}],
                                    "max_completion_tokens": 0}, "max_tokens"),
]


@pytest.mark.parametrize(("body", "word"), [c[1:] for c in CHAT_CASES], ids=[c[0] for c in CHAT_CASES])
def test_bad_chat_request_is_a_400(client: httpx.Client, body: dict[str, Any], word: str) -> None:
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert word in response.json()["error"]["message"]


@pytest.mark.parametrize("raw", [b"{", b"not json", b"\xff\xfe", b"[1, 2]", b"null", b""],
                         ids=["truncated", "text", "not-utf8", "array", "null", "empty"])
def test_malformed_json_body_is_a_400(client: httpx.Client, raw: bytes) -> None:
    response = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert_openai_error(response, 400, "invalid_json")


def test_oversized_body_is_a_413(client: httpx.Client) -> None:
    from inference.server import MAX_BODY_BYTES

    body = b'{"prompt": "' + b"a" * MAX_BODY_BYTES + b'"}'
    assert_openai_error(client.post("/v1/completions", content=body), 413, "request_too_large")


def test_unknown_route_and_wrong_method_keep_the_error_shape(client: httpx.Client) -> None:
    assert_openai_error(client.get("/v1/nothing"), 404, "not_found")
    assert_openai_error(client.get("/v1/completions"), 405, "method_not_allowed")


def test_full_waiting_queue_is_429_with_retry_after(client: httpx.Client, fake: RunningFake) -> None:
    engine = fake.engine
    engine.queue_full = True  # FakeEngine raises QueueFullError(retry_after_s=2.5)
    for path, body in [("/v1/completions", {"prompt": "hi"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"prompt": "hi", "stream": True})]:
        response = client.post(path, json=body)
        assert_openai_error(response, 429, "queue_full")
        assert response.headers["retry-after"] == "3"  # whole seconds, rounded up
    metrics = client.get("/metrics").text
    assert 'inferforge:requests_rejected_total{model_name="fake-model",reason="queue_full"}' in metrics


def test_engine_refusing_admission_while_draining_is_503(client: httpx.Client,
                                                           fake: RunningFake) -> None:
    engine = fake.engine
    engine.admission_closed = True
    assert_openai_error(client.post("/v1/completions", json={"prompt": "hi"}), 503, "draining")


def test_server_draining_refuses_new_requests_and_is_not_ready(fake: RunningFake,
                                                                client: httpx.Client) -> None:
    state = fake.state
    state.draining = True
    try:
        assert_openai_error(client.post("/v1/completions", json={"prompt": "hi"}), 503, "draining")
        ready = client.get("/ready")
        assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
        assert client.get("/health").status_code == 200
    finally:
        state.draining = False
    assert client.get("/ready").status_code == 200


def test_engine_failure_mid_request_is_503_not_500(client: httpx.Client, fake: RunningFake) -> None:
    engine = fake.engine
    engine.hold = True
    result: dict[str, httpx.Response] = {}
    worker = threading.Thread(target=lambda: result.update(
        r=client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 20})))
    worker.start()
    _wait_until(lambda: engine.active)
    engine.dead = True
    worker.join(10)
    assert_openai_error(result["r"], 503, "engine_unavailable")
    assert client.get("/ready").status_code == 503
    assert client.get("/health").status_code == 503


def test_engine_failure_mid_stream_ends_the_stream_with_an_error_event(
    client: httpx.Client, fake: RunningFake
) -> None:
    engine = fake.engine
    engine.hold = True
    events = []
    with client.stream("POST", "/v1/completions",
                       json={"prompt": "hi", "max_tokens": 20, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line:
                continue
            events.append(line.removeprefix("data: "))
            if len(events) == 1:
                engine.dead = True
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "engine_unavailable"


def test_unexpected_engine_exception_is_a_500_without_internals(client: httpx.Client,
                                                                 fake: RunningFake,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    engine = fake.engine

    async def broken(request: Any) -> Any:
        raise RuntimeError("secret internal detail")
        yield  # pragma: no cover  (makes this an async generator, like the real engine)

    monkeypatch.setattr(engine, "generate", broken)
    error = assert_openai_error(client.post("/v1/completions", json={"prompt": "hi"}), 500, "internal_error")
    assert "secret" not in error["message"]


def test_client_disconnect_mid_stream_frees_the_batch_slot(client: httpx.Client,
                                                           fake: RunningFake) -> None:
    engine = fake.engine
    engine.hold = True  # the request stays in the batch until released or aborted
    aborts_before = _abort_count(client)
    with client.stream("POST", "/v1/completions",
                       json={"prompt": "hi", "max_tokens": 50, "stream": True}) as response:
        lines = response.iter_lines()  # kept: a discarded iterator would close the stream early
        next(lines)  # first chunk arrived: the request is running
        request_id = engine.requests[-1].request_id
        assert request_id in engine.active
    # Leaving the block closes the connection mid-stream.
    _wait_until(lambda: request_id not in engine.active)
    assert request_id in engine.closed_early
    assert request_id in engine.aborted
    _wait_until(lambda: 'vllm:num_requests_running{model_name="fake-model"} 0.0' in client.get("/metrics").text)
    assert _abort_count(client) == aborts_before + 1  # counted as a finished (aborted) request


def test_client_disconnect_while_waiting_for_a_whole_response_frees_the_slot(
    fake: RunningFake, client: httpx.Client
) -> None:
    url, engine = fake.url, fake.engine
    engine.hold = True
    before = len(engine.requests)
    # 2 s: on a loaded machine the request must reach the engine before the client gives up.
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=url, timeout=2.0) as impatient:
        impatient.post("/v1/completions", json={"prompt": "hi", "max_tokens": 50})
    _wait_until(lambda: len(engine.requests) > before)
    request_id = engine.requests[before].request_id
    _wait_until(lambda: request_id not in engine.active)
    assert request_id in engine.aborted


def _abort_count(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('vllm:request_success_total{finished_reason="abort"'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
