"""Issue 12 item 3: `response_format` json_object / json_schema and `tool_choice` required / named,
enforced by grammar-constrained decoding (llguidance): the official `openai` client's
`chat.completions.parse` with a pydantic schema against `python -m inference serve` (real engine,
tiny random model, temperature 1), under continuous batching and at TP=2; schemas the grammar
library cannot compile are 400s naming the field, and compiling is bounded in time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
import torch
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from inference import structured_output
from tests.inference.fakes import fake_server, free_port, load_tokenizer
from tests.inference.test_api import serving, start_server, stop_server, wait_ready

pytestmark = pytest.mark.slow


class Replica(BaseModel):
    host: str = Field(max_length=12)
    gpus: int = Field(ge=1, le=8)


class Deployment(BaseModel):
    region: Literal["westeurope", "swedencentral"]
    stable: bool
    replicas: list[Replica] = Field(max_length=3)
    note: str | None = Field(max_length=16)


DEPLOYMENT_SCHEMA = to_strict_json_schema(Deployment)
MESSAGES = [{"role": "user", "content": "Describe the deployment."}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}}}
LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {
    "$defs": {"Key": {"type": "string", "enum": ["gpu", "region"]}},
    "type": "object", "properties": {"key": {"$ref": "#/$defs/Key"}}, "required": ["key"],
    "additionalProperties": False}}}
TOOLS = [WEATHER, LOOKUP]
PARAMETERS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
SAMPLED = {"temperature": 1.0, "max_tokens": 400}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tiny_model_dir, tmp_path_factory.mktemp("structured"), "--max-model-len", "1024") as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def assert_valid_calls(message: Any, tools: list[dict[str, Any]] = TOOLS) -> None:
    names = {tool["function"]["name"] for tool in tools}
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


# ---- response_format -----------------------------------------------------------------------------------


def test_parse_with_a_pydantic_schema_always_validates_when_sampling(client: openai.OpenAI, model: str) -> None:
    for seed in range(4):
        reply = client.chat.completions.parse(model=model, messages=MESSAGES, response_format=Deployment,
                                              seed=seed, n=2, **SAMPLED)
        for choice in reply.choices:
            assert choice.finish_reason == "stop"
            assert isinstance(choice.message.parsed, Deployment)
            jsonschema.validate(json.loads(choice.message.content), DEPLOYMENT_SCHEMA)


def test_json_object_replies_are_json_objects(client: openai.OpenAI, model: str) -> None:
    # A random model under a free-form object grammar may write one string value for hundreds of
    # tokens, so whether a seed ends within max_tokens is luck: every reply that ends must be an
    # object, one cut at max_tokens must be the start of one, and most must end.
    stopped = 0
    for seed in range(6):
        reply = client.chat.completions.create(model=model, messages=MESSAGES, seed=seed,
                                               response_format={"type": "json_object"}, **SAMPLED)
        choice = reply.choices[0]
        if choice.finish_reason == "stop":
            stopped += 1
            assert isinstance(json.loads(choice.message.content), dict)
        else:
            assert choice.finish_reason == "length" and choice.message.content.lstrip().startswith("{")
    assert stopped >= 4, stopped


def test_streamed_structured_reply_validates(client: openai.OpenAI, model: str) -> None:
    pieces = []
    finish = None
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, seed=7, stream=True,
                                                response_format={"type": "json_schema", "json_schema": {
                                                    "name": "deployment", "schema": DEPLOYMENT_SCHEMA,
                                                    "strict": True}}, **SAMPLED):
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert finish == "stop"
    Deployment.model_validate_json("".join(pieces))


def test_constrained_and_free_requests_share_the_batch(server: str, model: str) -> None:
    """Per-sequence matcher state: a seeded constrained request gives the same reply alone and amid
    other constrained and free requests (continuous batching), and every constrained reply validates."""
    body = {"model": model, "messages": MESSAGES, **SAMPLED,
            "response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": DEPLOYMENT_SCHEMA}}}

    async def run() -> tuple[str, list[str], list[str]]:
        async with httpx.AsyncClient(base_url=f"{server}/v1", timeout=120) as http:
            async def chat(payload: dict[str, Any]) -> str:
                response = await http.post("/chat/completions", json=payload)
                assert response.status_code == 200, response.text
                return response.json()["choices"][0]["message"]["content"]

            alone = await chat({**body, "seed": 11})
            batch = await asyncio.gather(
                *(chat({**body, "seed": 11 + i}) for i in range(4)),
                *(chat({"model": model, "messages": MESSAGES, "seed": i, "temperature": 1.0, "max_tokens": 40,
                        "extra_ignored": True}) for i in range(4)))
            return alone, list(batch[:4]), list(batch[4:])

    alone, constrained, free = asyncio.run(run())
    assert constrained[0] == alone
    for text in constrained:
        Deployment.model_validate_json(text)
    assert all(isinstance(text, str) for text in free)


# ---- tool_choice -----------------------------------------------------------------------------------------


def test_required_tool_choice_always_calls_a_tool_with_valid_arguments(client: openai.OpenAI, model: str) -> None:
    for seed in range(4):
        reply = client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                               seed=seed, **SAMPLED)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert_valid_calls(choice.message)
    single = client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                            parallel_tool_calls=False, seed=5, **SAMPLED)
    assert len(single.choices[0].message.tool_calls) == 1
    assert_valid_calls(single.choices[0].message)


def test_required_tool_calls_stream_as_deltas(client: openai.OpenAI, model: str) -> None:
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                                seed=3, stream=True, **SAMPLED):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls" and calls
    for call in calls.values():
        jsonschema.validate(json.loads(call["arguments"]), PARAMETERS[call["name"]])


def test_named_tool_arguments_follow_the_parameters_schema(client: openai.OpenAI, model: str) -> None:
    for seed in range(4):
        for name in ("get_weather", "lookup"):
            reply = client.chat.completions.create(
                model=model, messages=MESSAGES, tools=TOOLS, seed=seed, **SAMPLED,
                tool_choice={"type": "function", "function": {"name": name}})
            message = reply.choices[0].message
            assert [call.function.name for call in message.tool_calls] == [name]
            assert_valid_calls(message)


def test_auto_with_response_format_gives_a_valid_document_or_valid_calls(client: openai.OpenAI, model: str) -> None:
    for seed in range(4):
        reply = client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, seed=seed,
                                               response_format={"type": "json_schema", "json_schema": {
                                                   "name": "d", "schema": DEPLOYMENT_SCHEMA}}, **SAMPLED)
        message = reply.choices[0].message
        if message.tool_calls:
            assert_valid_calls(message)
        else:
            Deployment.model_validate_json(message.content)


# ---- schemas that cannot be enforced -------------------------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {"type": "string"}}}}},
     ["response_format.json_schema.schema", "not"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "minProperties": 3, "maxProperties": 1}}}}, ["response_format.json_schema.schema",
                                                                        "minProperties > maxProperties"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "pattern": "^(?=a)a$"}}}}, ["response_format.json_schema.schema", "look-around"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
     ["response_format.json_schema.schema", "not a valid JSON Schema"]),
    ({"response_format": {"type": "json_schema"}}, ["response_format", "json_schema"]),
    ({"response_format": {"type": "yaml"}}, ["response_format.type"]),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"not": {}}}}}}], "tool_choice": "required"},
     ["tools.1.function.parameters", "not"]),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "https://example.com/s.json"}}}],
      "tool_choice": {"type": "function", "function": {"name": "f"}}}, ["tools.0.function.parameters"]),
])
def test_a_schema_the_grammar_library_cannot_enforce_is_a_400_naming_it(server: str, body: dict[str, Any],
                                                                        expected: list[str]) -> None:
    response = httpx.post(f"{server}/v1/chat/completions", timeout=60,
                          json={"messages": MESSAGES, "max_tokens": 4, **body})
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    for word in expected:
        assert word in message


def test_compiling_is_bounded_in_time(tiny_model_dir: Path) -> None:
    """A schema that compiles slower than the limit is a 400 (never a hang or a 500), and the
    server keeps answering."""
    tokenizer = load_tokenizer(tiny_model_dir)
    huge_enum = {"type": "string", "enum": [f"value-{i}-{'x' * 20}" for i in range(30_000)]}
    with fake_server(tokenizer, max_model_len=1024) as fake:
        fake.state.grammars.timeout_s = 0.02  # the enum takes hundreds of milliseconds to compile
        response = httpx.post(f"{fake.url}/v1/chat/completions", timeout=60, json={
            "messages": MESSAGES, "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": huge_enum}}})
        assert response.status_code == 400, response.text
        assert "could not be compiled" in response.json()["error"]["message"]
        fake.state.grammars.timeout_s = structured_output.COMPILE_TIMEOUT_S
        assert httpx.post(f"{fake.url}/v1/chat/completions", timeout=60,
                          json={"messages": MESSAGES, "max_tokens": 4}).status_code == 200


# ---- the mask itself -------------------------------------------------------------------------------------


def test_masks_apply_per_row_and_keep_the_raw_logits(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    compiler = structured_output.GrammarCompiler(tokenizer)
    source = structured_output.GrammarSource(structured_output._schema_grammar({"type": "boolean"}), "test")
    grammar = asyncio.run(compiler.compile(source))
    first, second = grammar.new_constraint(), grammar.new_constraint()
    logits = torch.randn(3, len(tokenizer))
    raw = logits.clone()
    first.accept(tokenizer.encode("t", add_special_tokens=False)[0])  # "t" of true: only "rue" may follow
    masked = structured_output.constrain_logits(logits, [first, None, second], [tokenizer.eos_token_id])
    assert torch.equal(logits, raw) and torch.equal(masked[1], raw[1])
    allowed = [tokenizer.decode([t]) for t in torch.isfinite(masked[0]).nonzero().flatten().tolist()]
    assert allowed and all("rue".startswith(text) for text in allowed)
    fresh = [tokenizer.decode([t]) for t in torch.isfinite(masked[2]).nonzero().flatten().tolist()]
    assert "t" in fresh and "f" in fresh and tokenizer.eos_token not in fresh
    compiler.shutdown()


# ---- tensor parallel -------------------------------------------------------------------------------------


def test_structured_output_at_tp2(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Rank 0 samples, so only rank 0 holds the masks; the reply validates at TP=2 as at TP=1."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(tiny_model_dir, port, "--allow-unauthenticated", "--max-model-len", "1024",
                        "--tp-size", "2", log_path=tmp_path / "server.log")
    try:
        wait_ready(proc, url, timeout=240)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        for seed in range(2):
            reply = client.chat.completions.parse(model=client.models.list().data[0].id, messages=MESSAGES,
                                                  response_format=Deployment, seed=seed, **SAMPLED)
            assert isinstance(reply.choices[0].message.parsed, Deployment)
        required = client.chat.completions.create(model=client.models.list().data[0].id, messages=MESSAGES,
                                                  tools=TOOLS, tool_choice="required", seed=1, **SAMPLED)
        assert_valid_calls(required.choices[0].message)
    finally:
        assert stop_server(proc) == 0


def test_objects_with_declared_properties_get_no_undeclared_ones() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}},
                                               "free": {"type": "object"}},
              "$defs": {"D": {"properties": {"x": {}}}},
              "allOf": [{"properties": {"y": {}}}],
              "anyOf": [{"properties": {"z": {}}, "additionalProperties": True}]}
    closed = structured_output.close_objects(schema)
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["$defs"]["D"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["free"]  # free-form stays free-form
    assert "additionalProperties" not in closed["allOf"][0] and "additionalProperties" not in closed  # allOf combines
    assert closed["anyOf"][0]["additionalProperties"] is True  # what the schema says wins
    assert schema["properties"]["a"].get("additionalProperties") is None  # the request's schema is not modified
