"""Issue 12 item 2 (tools with tool_choice none/auto/named; `required` and the grammar behind
named calls are in test_structured_output.py): tools rendered through the chat template,
Hermes-format calls parsed into `tool_calls` (streamed as deltas too) with finish_reason
`tool_calls`, and malformed tool schemas refused with a 400 naming the problem. The HTTP cases use
the official `openai` client against the scripted FakeEngine, whose output is set to what a
tool-calling model writes."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from inference import tool_calls
from tests.inference.fakes import RunningFake, fake_server, load_tokenizer

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
MESSAGES = [{"role": "user", "content": "Weather in Paris and the time?"}]
TWO_CALLS = ('Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
             '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')


# ---- the parser ----------------------------------------------------------------------------------


def test_parse_finds_calls_and_keeps_the_content_before_them() -> None:
    content, calls = tool_calls.parse(TWO_CALLS)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}),
                                                                  ("get_time", {})]
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize("text", ["no calls here", "<tool_call>not json</tool_call>",
                                  '<tool_call>{"arguments": {}}</tool_call>', "<tool_call>{\"name\": \"x\""])
def test_text_that_is_not_a_call_stays_content(text: str) -> None:
    assert tool_calls.parse(text) == (text, [])


@pytest.mark.parametrize("seed", range(5))
def test_streaming_parser_gives_the_same_calls_and_content_for_any_chunking(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(TWO_CALLS)), 12))
    pieces = [TWO_CALLS[a:b] for a, b in zip([0, *cuts], [*cuts, len(TWO_CALLS)], strict=True)]
    parser = tool_calls.StreamingParser()
    out = [item for piece in pieces for item in parser.feed(piece)] + parser.finish()
    content = "".join(i for i in out if isinstance(i, str))
    calls = [i for i in out if isinstance(i, tool_calls.ToolCall)]
    assert content.strip() == "Let me check."
    assert [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in tool_calls.parse(TWO_CALLS)[1]]


def test_named_call_takes_the_arguments_the_model_wrote() -> None:
    call = tool_calls.parse_named("get_weather", '{"city": "Oslo"}}</tool_call>')
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    broken = tool_calls.parse_named("get_weather", '{"city": "Os')
    assert (broken.name, broken.arguments) == ("get_weather", '{"city": "Os')


# ---- over HTTP -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def fake(tokenizer: Any) -> Iterator[RunningFake]:
    with fake_server(tokenizer, max_model_len=1024) as running:
        yield running


def test_auto_tool_calls_are_parsed_with_finish_reason_tool_calls(oai: openai.OpenAI, model_writes: Any,
                                                                  fake: RunningFake, tokenizer: Any) -> None:
    model_writes(TWO_CALLS)
    reply = oai.chat.completions.create(model="fake-model", messages=MESSAGES, tools=[WEATHER_TOOL, TIME_TOOL],
                                        max_tokens=200)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == \
        [("get_weather", {"city": "Paris"}), ("get_time", {})]
    # The tools reached the model through its chat template.
    prompt = tokenizer.decode(fake.engine.requests[-1].prompt_token_ids)
    assert json.dumps(WEATHER_TOOL["function"]["parameters"]) in prompt
    assert "<tools>" in prompt


def test_streamed_tool_calls_arrive_as_deltas(oai: openai.OpenAI, model_writes: Any) -> None:
    model_writes(TWO_CALLS)
    content = ""
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in oai.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=200,
                                             tools=[WEATHER_TOOL, TIME_TOOL], stream=True):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += (delta.function.name or "") if delta.function else ""
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert content.strip() == "Let me check."
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == \
        [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_parallel_tool_calls_false_keeps_the_first_call(oai: openai.OpenAI, model_writes: Any) -> None:
    model_writes(TWO_CALLS)
    reply = oai.chat.completions.create(model="fake-model", messages=MESSAGES, tools=[WEATHER_TOOL, TIME_TOOL],
                                        parallel_tool_calls=False, max_tokens=200)
    assert [c.function.name for c in reply.choices[0].message.tool_calls] == ["get_weather"]


def test_tool_choice_none_returns_the_text(oai: openai.OpenAI, model_writes: Any) -> None:
    model_writes(TWO_CALLS)
    reply = oai.chat.completions.create(model="fake-model", messages=MESSAGES, tools=[WEATHER_TOOL, TIME_TOOL],
                                        tool_choice="none", max_tokens=200)
    assert reply.choices[0].finish_reason == "stop"
    assert not reply.choices[0].message.tool_calls
    assert "<tool_call>" in reply.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_named_tool_choice_opens_the_call_for_the_model(oai: openai.OpenAI, model_writes: Any, fake: RunningFake,
                                                        tokenizer: Any, stream: bool) -> None:
    model_writes('{"city": "Oslo"}}</tool_call>')
    kwargs = dict(model="fake-model", messages=MESSAGES, tools=[WEATHER_TOOL, TIME_TOOL], max_tokens=200,
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    if stream:
        calls = [d for chunk in oai.chat.completions.create(stream=True, **kwargs) for c in chunk.choices
                 for d in c.delta.tool_calls or []]
        assert len(calls) == 1
        name, arguments = calls[0].function.name, calls[0].function.arguments
    else:
        message = oai.chat.completions.create(**kwargs).choices[0].message
        assert message.content is None
        name, arguments = message.tool_calls[0].function.name, message.tool_calls[0].function.arguments
    assert (name, json.loads(arguments)) == ("get_weather", {"city": "Oslo"})
    prompt = tokenizer.decode(fake.engine.requests[-1].prompt_token_ids)
    assert prompt.endswith('<tool_call>{"name": "get_weather", "arguments": ')


@pytest.mark.parametrize(("body", "words"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
     ["tools.0.function.parameters", "JSON Schema"]),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": 3}}}]},
     ["tools.0.function.parameters"]),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, ["tools.0.function.name"]),
    ({"tools": [{"type": "retrieval"}]}, ["tools.0"]),
    ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, ["unique"]),
    ({"tool_choice": "required"}, ["tool_choice needs tools"]),
    ({"tool_choice": "auto"}, ["tool_choice needs tools"]),
    ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, ["nope"]),
    ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, ["tool_choice"]),
])
def test_malformed_tools_are_a_400_naming_the_problem(fake: RunningFake, body: dict[str, Any],
                                                      words: list[str]) -> None:
    response = httpx.post(f"{fake.url}/v1/chat/completions", json={"messages": MESSAGES, **body}, timeout=30)
    assert response.status_code == 400, response.text
    for word in words:
        assert word in response.json()["error"]["message"]
