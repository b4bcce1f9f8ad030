"""Issue 12 item 2, per model family: `--tool-call-parser {hermes,llama3_json,mistral}` selects the
call syntax replies are parsed for (whole and streamed, as vLLM's parsers of those names read it)
and the syntax the `tool_choice` required/named grammars make the model write. Hermes itself is
covered by test_tool_calls.py (unchanged). The HTTP cases use the official `openai` client against
the scripted FakeEngine served with the flag's value, writing what a model of the family writes."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from inference import structured_output, tool_calls
from inference.protocol import ChatCompletionRequest
from tests.inference.fakes import RunningFake, fake_server, load_tokenizer

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
TOOLS = [WEATHER_TOOL, TIME_TOOL]
MESSAGES = [{"role": "user", "content": "Weather in Paris and the time?"}]
EXPECTED = [("get_weather", {"city": "Paris"}), ("get_time", {})]

# What each family writes: text before the calls, then two calls.
TWO_CALLS = {
    "llama3_json": 'Let me check. <|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
                   '{"name": "get_time", "parameters": {}}',
    "mistral": 'Let me check. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
               '{"name": "get_time", "arguments": {}}]',
}
# Other spellings the parsers read: bare JSON (Llama's own template), v11 Mistral, `arguments` key.
OTHER_SPELLINGS = [
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "arguments": {}}'),
    ("llama3_json", ' <|python_tag|>{"name": "get_weather", "arguments": {"city": "Paris"}};{"name": "get_time", '
                    '"parameters": {}}\n'),
    ("mistral", '[TOOL_CALLS]get_weather{"city": "Paris"}[TOOL_CALLS]get_time{}'),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time"}]'),
]
# Text that is not (wholly) calls: returned as content, never an error.
MALFORMED = [
    ("llama3_json", "The weather is fine."),
    ("llama3_json", '{"city": "Paris"}'),  # JSON, but not a call
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Par'),  # cut off
    ("llama3_json", 'Let me check. <|python_tag|>{"name": "get_weather"} and more text'),
    ("llama3_json", 'Sure: {"name": "get_weather", "parameters": {}}'),  # JSON mid-text without the tag
    ("mistral", "The weather is fine."),
    ("mistral", "[TOOL_CALLS] not json"),
    ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}'),  # cut off
    ("mistral", '[TOOL_CALLS] [{"arguments": {}}]'),  # no name
    ("mistral", "[TOOL_CALLS] []"),
]


def stream_all(fmt: tool_calls.ToolCallFormat, text: str, seed: int) -> list[str | tool_calls.ToolCall]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), min(12, len(text) - 1)))
    parser = fmt.stream()
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return [item for piece in pieces for item in parser.feed(piece)] + parser.finish()


def named_args(calls: list[tool_calls.ToolCall]) -> list[tuple[str, Any]]:
    return [(call.name, json.loads(call.arguments)) for call in calls]


# ---- the parsers ------------------------------------------------------------------------------------


def test_the_flag_values_are_the_formats() -> None:
    assert sorted(tool_calls.FORMATS) == ["hermes", "llama3_json", "mistral"]
    with pytest.raises(ValueError, match="hermes, llama3_json, mistral"):
        tool_calls.get_format("pythonic")


@pytest.mark.parametrize("name", sorted(TWO_CALLS))
def test_whole_reply_calls_and_the_content_before_them(name: str) -> None:
    content, calls = tool_calls.get_format(name).parse(TWO_CALLS[name])
    assert content == "Let me check."
    assert named_args(calls) == EXPECTED
    assert len({call.id for call in calls}) == 2


@pytest.mark.parametrize(("name", "text"), OTHER_SPELLINGS)
def test_other_spellings_of_the_family(name: str, text: str) -> None:
    content, calls = tool_calls.get_format(name).parse(text)
    assert content is None
    assert named_args(calls) == EXPECTED


@pytest.mark.parametrize(("name", "text"), MALFORMED)
def test_text_that_is_not_calls_stays_content(name: str, text: str) -> None:
    fmt = tool_calls.get_format(name)
    assert fmt.parse(text) == (text, [])
    for seed in range(3):
        out = stream_all(fmt, text, seed)
        assert "".join(item for item in out if isinstance(item, str)) == text
        assert not [item for item in out if isinstance(item, tool_calls.ToolCall)]


@pytest.mark.parametrize("name", sorted(TWO_CALLS))
@pytest.mark.parametrize("seed", range(5))
def test_streaming_gives_the_same_calls_and_content_for_any_chunking(name: str, seed: int) -> None:
    fmt = tool_calls.get_format(name)
    out = stream_all(fmt, TWO_CALLS[name], seed)
    assert "".join(item for item in out if isinstance(item, str)).strip() == "Let me check."
    assert named_args([item for item in out if isinstance(item, tool_calls.ToolCall)]) == EXPECTED


@pytest.mark.parametrize(("name", "text"), OTHER_SPELLINGS)
def test_streaming_other_spellings(name: str, text: str) -> None:
    out = stream_all(tool_calls.get_format(name), text, 0)
    assert "".join(item for item in out if isinstance(item, str)).strip() == ""
    assert named_args([item for item in out if isinstance(item, tool_calls.ToolCall)]) == EXPECTED


def test_mistral_call_ids_are_what_mistral_templates_accept() -> None:
    _, calls = tool_calls.get_format("mistral").parse(TWO_CALLS["mistral"])
    assert all(len(call.id) == 9 and call.id.isalnum() for call in calls)


@pytest.mark.parametrize(("name", "prefix", "written"), [
    ("llama3_json", '{"name": "get_weather", "parameters": ', '{"city": "Oslo"}}'),
    ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": ', '{"city": "Oslo"}}]'),
])
def test_named_call_prefix_and_parse(name: str, prefix: str, written: str) -> None:
    fmt = tool_calls.get_format(name)
    assert fmt.named_call_prefix("get_weather") == prefix
    call = fmt.parse_named("get_weather", written)
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    broken = fmt.parse_named("get_weather", '{"city": "Os')
    assert (broken.name, broken.arguments) == ("get_weather", '{"city": "Os')


# ---- the grammars of tool_choice required / named --------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return load_tokenizer(tiny_model_dir)


def grammar_accepts(compiler: structured_output.GrammarCompiler, req: ChatCompletionRequest, tokenizer: Any,
                    text: str) -> bool:
    """Whether the request's compiled grammar lets the model write exactly `text` (then stop)."""
    grammar = asyncio.run(compiler.for_request(req))
    constraint = grammar.new_constraint()
    for token in tokenizer.encode(text, add_special_tokens=False):
        if constraint.matcher.is_error():
            return False
        constraint.accept(token)
    return not constraint.matcher.is_error() and constraint.matcher.is_accepting()


REQUIRED_OUTPUTS = {
    "hermes": '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
              '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
    "llama3_json": '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {}}',
    "mistral": '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
               '{"name": "get_time", "arguments": {}}]',
}


@pytest.mark.parametrize("name", sorted(REQUIRED_OUTPUTS))
def test_required_grammar_writes_the_selected_syntax_and_its_parser_reads_it(name: str, tokenizer: Any) -> None:
    fmt = tool_calls.get_format(name)
    compiler = structured_output.GrammarCompiler(tokenizer, tool_format=fmt)
    try:
        req = ChatCompletionRequest.model_validate({"messages": MESSAGES, "tools": TOOLS, "tool_choice": "required"})
        for other, text in REQUIRED_OUTPUTS.items():
            assert grammar_accepts(compiler, req, tokenizer, text) == (other == name), other
        assert not grammar_accepts(compiler, req, tokenizer, REQUIRED_OUTPUTS[name].replace('"Paris"', "3"))
        assert named_args(fmt.parse(REQUIRED_OUTPUTS[name])[1]) == [("get_weather", {"city": "Paris"}),
                                                                   ("get_time", {})]
        single = req.model_copy(update={"parallel_tool_calls": False})
        assert not grammar_accepts(compiler, single, tokenizer, REQUIRED_OUTPUTS[name])
        named = ChatCompletionRequest.model_validate({"messages": MESSAGES, "tools": TOOLS, "tool_choice": {
            "type": "function", "function": {"name": "get_weather"}}})
        closing = fmt.call_suffix + fmt.calls_close
        assert grammar_accepts(compiler, named, tokenizer, '{"city": "Oslo"}' + closing)
        assert not grammar_accepts(compiler, named, tokenizer, '{"city": "Oslo"}}</tool_call>' + "x")
    finally:
        compiler.shutdown()


# ---- over HTTP, with the flag's value -------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(TWO_CALLS))
def fake(request: pytest.FixtureRequest, tokenizer: Any) -> Iterator[RunningFake]:
    with fake_server(tokenizer, max_model_len=1024, tool_call_parser=request.param) as running:
        yield running


def test_calls_of_the_selected_format_are_parsed(oai: openai.OpenAI, model_writes: Any, fake: RunningFake) -> None:
    name = fake.state.tool_format.name
    model_writes(TWO_CALLS[name])
    choice = oai.chat.completions.create(model="fake-model", messages=MESSAGES, tools=TOOLS, max_tokens=200).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == EXPECTED
    # Another family's syntax is text to this deployment.
    other = next(text for other, text in TWO_CALLS.items() if other != name)
    model_writes(other)
    choice = oai.chat.completions.create(model="fake-model", messages=MESSAGES, tools=TOOLS, max_tokens=200).choices[0]
    assert (choice.finish_reason, choice.message.content) == ("stop", other)
    assert not choice.message.tool_calls


def test_streamed_calls_of_the_selected_format(oai: openai.OpenAI, model_writes: Any, fake: RunningFake) -> None:
    model_writes(TWO_CALLS[fake.state.tool_format.name])
    content, calls, finish = "", {}, None
    for chunk in oai.chat.completions.create(model="fake-model", messages=MESSAGES, tools=TOOLS, max_tokens=200,
                                             stream=True):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert content.strip() == "Let me check."
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == EXPECTED
    assert all(c["id"] for c in calls.values())


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_calls_are_content_not_errors(oai: openai.OpenAI, model_writes: Any, fake: RunningFake,
                                                stream: bool) -> None:
    text = next(text for name, text in MALFORMED if name == fake.state.tool_format.name and "Paris" in text)
    model_writes(text)
    kwargs = dict(model="fake-model", messages=MESSAGES, tools=TOOLS, max_tokens=200)
    if stream:
        chunks = list(oai.chat.completions.create(stream=True, **kwargs))
        content = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
        assert not [d for chunk in chunks for c in chunk.choices for d in c.delta.tool_calls or []]
    else:
        message = oai.chat.completions.create(**kwargs).choices[0].message
        content = message.content
        assert not message.tool_calls
    assert content == text


@pytest.mark.parametrize("stream", [False, True])
def test_named_tool_choice_opens_the_call_in_the_selected_syntax(oai: openai.OpenAI, model_writes: Any,
                                                                 fake: RunningFake, tokenizer: Any,
                                                                 stream: bool) -> None:
    fmt = fake.state.tool_format
    model_writes('{"city": "Oslo"}' + fmt.call_suffix + fmt.calls_close)
    kwargs = dict(model="fake-model", messages=MESSAGES, tools=TOOLS, max_tokens=200,
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    if stream:
        calls = [d for chunk in oai.chat.completions.create(stream=True, **kwargs) for c in chunk.choices
                 for d in c.delta.tool_calls or []]
        assert len(calls) == 1
        name, arguments = calls[0].function.name, calls[0].function.arguments
    else:
        name, arguments = [(c.function.name, c.function.arguments)
                           for c in oai.chat.completions.create(**kwargs).choices[0].message.tool_calls][0]
    assert (name, json.loads(arguments)) == ("get_weather", {"city": "Oslo"})
    assert tokenizer.decode(fake.engine.requests[-1].prompt_token_ids).endswith(fmt.named_call_prefix("get_weather"))


def test_a_marker_held_as_a_special_token_is_read(tiny_model_dir: Path) -> None:
    """Llama's `<|python_tag|>` and Mistral's `[TOOL_CALLS]` are special tokens that decoding drops;
    the server puts their text back so the parser sees where calls begin."""
    special = load_tokenizer(tiny_model_dir)
    special.add_special_tokens({"additional_special_tokens": ["[TOOL_CALLS]"]})
    marker_id = special.convert_tokens_to_ids("[TOOL_CALLS]")
    assert tool_calls.marker_token_ids(special, tool_calls.get_format("mistral")) == {marker_id: "[TOOL_CALLS]"}
    assert tool_calls.marker_token_ids(special, tool_calls.get_format("llama3_json")) == {}
    with fake_server(special, max_model_len=1024, tool_call_parser="mistral") as running:
        running.engine.script = special.encode(TWO_CALLS["mistral"], add_special_tokens=False)
        assert marker_id in running.engine.script
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0, timeout=30)
        message = client.chat.completions.create(model="fake-model", messages=MESSAGES, tools=TOOLS,
                                                 max_tokens=200).choices[0].message
        assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == EXPECTED
        # Without tools the special token stays hidden, as before.
        plain = client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=200)
        assert "[TOOL_CALLS]" not in plain.choices[0].message.content


# ---- the real server, a sampling model, the flag on the command line ----------------------------------


@pytest.mark.parametrize("name", ["llama3_json", "mistral"])
def test_required_and_named_calls_with_a_sampling_model(name: str, tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    """`python -m inference serve --tool-call-parser NAME` with the tiny random model at temperature 1:
    the grammar makes it write NAME's syntax, which the server parses into valid calls."""
    import jsonschema

    from tests.inference.fakes import free_port
    from tests.inference.test_api import start_server, stop_server, wait_ready
    from tests.inference.test_structured_output import PARAMETERS, SAMPLED
    from tests.inference.test_structured_output import TOOLS as SCHEMA_TOOLS

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(tiny_model_dir, port, "--allow-unauthenticated", "--max-model-len", "1024",
                        "--tool-call-parser", name, log_path=tmp_path / "server.log")
    try:
        wait_ready(proc, url)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        for seed in range(2):
            choice = client.chat.completions.create(model=model, messages=MESSAGES, tools=SCHEMA_TOOLS,
                                                    tool_choice="required", seed=seed, **SAMPLED).choices[0]
            assert choice.finish_reason == "tool_calls", choice
            assert choice.message.tool_calls
            for call in choice.message.tool_calls:
                jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])
        calls: dict[int, dict[str, str]] = {}
        for chunk in client.chat.completions.create(model=model, messages=MESSAGES, tools=SCHEMA_TOOLS, seed=3,
                                                    tool_choice="required", stream=True, **SAMPLED):
            for c in chunk.choices:
                for delta in c.delta.tool_calls or []:
                    call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
        assert calls
        for call in calls.values():
            jsonschema.validate(json.loads(call["arguments"]), PARAMETERS[call["name"]])
        named = client.chat.completions.create(model=model, messages=MESSAGES, tools=SCHEMA_TOOLS, seed=4, **SAMPLED,
                                               tool_choice={"type": "function", "function": {"name": "get_weather"}})
        [call] = named.choices[0].message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS["get_weather"])
    finally:
        assert stop_server(proc) == 0
