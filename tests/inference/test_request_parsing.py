"""Issue 12 item 1: tolerant request parsing the way vLLM does it.

Unknown fields are accepted, ignored, counted and logged by name (never by value); known fields stay
strictly validated with 400s naming the field; `developer` maps to `system`; `tool` messages and
assistant `tool_calls` round-trip through the model's chat template. Runs the real HTTP stack over
the scripted FakeEngine, which records the prompt token ids the server rendered.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.inference.fakes import RunningFake, fake_server, load_tokenizer

SECRET = "value-that-must-never-be-logged"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def fake(tokenizer: Any) -> Iterator[RunningFake]:
    with fake_server(tokenizer, max_model_len=512) as running:
        yield running


@pytest.fixture()
def client(fake: RunningFake) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=30) as c:
        yield c


def rendered_prompt(fake: RunningFake, tokenizer: Any) -> str:
    """The text of the prompt the server sent to the engine for the last request."""
    return tokenizer.decode(fake.engine.requests[-1].prompt_token_ids)


def ignored_count(client: httpx.Client, field: str) -> float:
    prefix = f'inferforge:request_ignored_fields_total{{field="{field}",model_name="fake-model"}} '
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


def test_unknown_fields_are_ignored_counted_and_logged_by_name_only(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    before = ignored_count(client, "service_tier"), ignored_count(client, "messages[].vendor_note")
    body = {"messages": [{"role": "user", "content": "hi", "vendor_note": SECRET}], "max_tokens": 3,
            "service_tier": SECRET, "metadata": {"k": SECRET}, "store": False}
    with caplog.at_level(logging.INFO, logger="inference.server"):
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    after = ignored_count(client, "service_tier"), ignored_count(client, "messages[].vendor_note")
    assert after == (before[0] + 1, before[1] + 1)
    assert ignored_count(client, "metadata") >= 1
    [line] = [r for r in caplog.records if r.getMessage() == "request fields ignored"]
    fields = line.fields  # type: ignore[attr-defined]
    assert set(fields["ignored_fields"]) == {"service_tier", "metadata", "store", "messages[].vendor_note"}
    assert SECRET not in caplog.text
    assert SECRET not in json.dumps(fields)


def test_completions_accept_unknown_fields_too(client: httpx.Client) -> None:
    response = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "some_vendor_knob": [1, 2]})
    assert response.status_code == 200, response.text
    assert ignored_count(client, "some_vendor_knob") >= 1


def test_hostile_field_names_share_one_bounded_label(client: httpx.Client) -> None:
    from inference.metrics import MAX_FIELD_LABELS

    for i in range(MAX_FIELD_LABELS + 10):
        body = {"prompt": "hi", "max_tokens": 1, f"junk_{i}": 1, "bad name with spaces": 1}
        assert client.post("/v1/completions", json=body).status_code == 200
    labels = [line for line in client.get("/metrics").text.splitlines()
              if line.startswith("inferforge:request_ignored_fields_total{")]
    assert len(labels) <= MAX_FIELD_LABELS + 1
    assert ignored_count(client, "other") >= 11


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": "hi", "temperature": "0.5", "top_k": 3}, "temperature"),
    ({"prompt": "hi", "max_tokens": 2.5, "unknown": 1}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "true", "extra": 1}, "stream"),
    ({"messages": [{"role": "tool", "content": "22C"}]}, "tool_call_id"),
    ({"messages": [{"role": "user"}]}, "content is required"),
    ({"messages": [{"role": "user", "content": None}]}, "content is required"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "tool_calls"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                          "function": {"name": "f"}}]}]}, "arguments"),
    ({"messages": [{"role": "critic", "content": "hi"}]}, "role"),
    ({"prompt": "hi", "top_k": "5"}, "top_k"),
    ({"prompt": "hi", "top_k": -2}, "top_k"),
    ({"prompt": "hi", "top_k": 1.5}, "top_k"),
    ({"messages": [{"role": "user", "content": "hi"}], "min_p": 1.5}, "min_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "min_p": -0.1}, "min_p"),
])
def test_known_fields_are_still_validated_strictly(client: httpx.Client, body: dict[str, Any], field: str) -> None:
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"]


def test_developer_role_is_rendered_as_system(client: httpx.Client, fake: RunningFake, tokenizer: Any) -> None:
    prompts = []
    for role in ("developer", "system"):
        body = {"messages": [{"role": role, "content": "Be brief."}, {"role": "user", "content": "hi"}],
                "max_tokens": 2}
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        prompts.append(fake.engine.requests[-1].prompt_token_ids)
    assert prompts[0] == prompts[1]
    assert "<|system|>\nBe brief." in tokenizer.decode(prompts[0])


TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees"},
]


def test_tool_calls_and_tool_results_round_trip_through_the_chat_template(
    oai: openai.OpenAI, fake: RunningFake, tokenizer: Any
) -> None:
    reply = oai.chat.completions.create(model="fake-model", messages=TOOL_CONVERSATION, max_tokens=4)
    assert reply.choices[0].message.content
    prompt = rendered_prompt(fake, tokenizer)
    # Exactly what the template renders from the structured messages (arguments as a JSON object).
    expected = tokenizer.apply_chat_template(
        [TOOL_CONVERSATION[0],
         {"role": "assistant", "content": "", "tool_calls": [
             {"id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}}]},
         {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees"}],
        add_generation_prompt=True, tokenize=False)
    assert prompt == expected
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}</tool_call>' in prompt
    assert "<|tool|>\n22 degrees" in prompt


def test_stock_client_extra_body_and_developer_role_work(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model="fake-model", max_tokens=5,
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        extra_body={"top_k": 5, "vendor": {"nested": True}},
        user="someone", store=False, metadata={"trace": "1"},
    )
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"


def test_top_k_and_min_p_are_known_sampling_fields(client: httpx.Client, fake: RunningFake) -> None:
    """No longer ignored: they reach the engine's sampling parameters (-1 = off, as in vLLM)."""
    before = ignored_count(client, "top_k")
    for top_k, min_p, expected in ((5, 0.1, (5, 0.1)), (-1, 0.0, (0, 0.0))):
        response = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "top_k": top_k, "min_p": min_p})
        assert response.status_code == 200, response.text
        params = fake.engine.requests[-1].params
        assert (params.top_k, params.min_p) == expected
    assert ignored_count(client, "top_k") == before
