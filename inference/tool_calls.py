"""Tool calls in model output, parsed whole or while streaming, in the format the deployment selects.

`--tool-call-parser` (serve.py) picks one `ToolCallFormat` for the server's life, as vLLM's flag of
the same name does; each reads the syntax its model family's chat template teaches:

* `hermes` (default; NousResearch Hermes, Qwen2.5, Qwen3, `inference.model_factory`'s template):
  ``<tool_call>{"name": <name>, "arguments": <JSON object>}</tool_call>``, any number, after
  optional text. A block that is not a JSON object with a string `name` stays in the content, as in
  vLLM's `hermes` parser. Streaming: content is passed on as it comes, except a tail that could be
  the start of ``<tool_call>`` (held back until it cannot be); a call is emitted once its closing tag
  arrives, as one `tool_calls` delta carrying id, name and the whole arguments string (the OpenAI
  delta protocol lets clients concatenate argument fragments; one fragment is a valid stream).
* `llama3_json` (Llama 3.1/3.2/3.3 JSON tool calling, vLLM's `llama3_json`): one or more
  ``{"name": <name>, "parameters": <JSON object>}`` (`arguments` is read too) separated by ``;``,
  either as the whole reply or after ``<|python_tag|>`` (text before the tag is content).
* `mistral` (vLLM's `mistral`): text, then ``[TOOL_CALLS]`` and a JSON array of
  ``{"name": ..., "arguments": {...}}``; the v11 tokenizer form ``[TOOL_CALLS]name{...}`` (repeated
  per call) is read too. Call ids are 9 alphanumerics, the only ids Mistral chat templates accept.

The calls of `llama3_json` and `mistral` run to the end of the reply (the template ends the turn
after them), so in a stream their calls are sent when the reply ends; a call section that does not
parse as calls is returned as content (no partial calls, never an error), as vLLM does.
Markers that are special tokens (``<|python_tag|>``, ``[TOOL_CALLS]``) are dropped when text is
decoded; the server puts their text back for requests whose calls are parsed (`markers`).
"""

from __future__ import annotations

import json
import re
import secrets
import string
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

from .settings import ToolCallParser

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: an OpenAI `tool_calls[]` entry."""

    id: str
    name: str
    arguments: str  # JSON text

    def to_openai(self, index: int | None = None) -> dict:
        out = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_call(block: str) -> ToolCall | None:
    """The call in the text between the tags, or None when it is not one."""
    try:
        value = json.loads(block)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(new_call_id(), value["name"], text)


def parse(text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a whole output; content is None when only calls were written."""
    calls: list[ToolCall] = []
    rest: list[str] = []
    last = 0
    for match in _BLOCK.finditer(text):
        call = parse_call(match.group(1).strip())
        if call is None:
            continue
        calls.append(call)
        rest.append(text[last:match.start()])
        last = match.end()
    rest.append(text[last:])
    if not calls:
        return text, []
    content = "".join(rest).strip()
    return content or None, calls


class StreamingParser:
    """Feeds text deltas, returns content deltas and completed calls in order."""

    def __init__(self) -> None:
        self._buffer = ""
        self._in_call = False
        self.calls: list[ToolCall] = []

    def feed(self, delta: str) -> list[str | ToolCall]:
        self._buffer += delta
        out: list[str | ToolCall] = []
        while True:
            if self._in_call:
                end = self._buffer.find(CLOSE)
                if end == -1:
                    return out
                block, self._buffer = self._buffer[:end], self._buffer[end + len(CLOSE):]
                self._in_call = False
                call = parse_call(block.strip())
                if call is None:
                    out.append(OPEN + block + CLOSE)  # not a call after all: it is content
                else:
                    self.calls.append(call)
                    out.append(call)
                continue
            start = self._buffer.find(OPEN)
            if start != -1:
                if start:
                    out.append(self._buffer[:start])
                self._buffer = self._buffer[start + len(OPEN):]
                self._in_call = True
                continue
            # Hold back a tail that could be the beginning of the opening tag.
            hold = next((n for n in range(min(len(OPEN) - 1, len(self._buffer)), 0, -1)
                         if OPEN.startswith(self._buffer[-n:])), 0)
            ready = self._buffer[: len(self._buffer) - hold]
            self._buffer = self._buffer[len(self._buffer) - hold:]
            if ready:
                out.append(ready)
            return out

    def finish(self) -> list[str | ToolCall]:
        """The rest at the end of the output: held-back text, or an unclosed call as text."""
        rest = (OPEN if self._in_call else "") + self._buffer
        self._buffer, self._in_call = "", False
        return [rest] if rest else []


def named_call_prefix(name: str) -> str:
    """What the assistant turn is started with when `tool_choice` names `name`: the model writes the arguments."""
    return OPEN + '{"name": ' + json.dumps(name) + ', "arguments": '


def parse_named(name: str, output: str) -> ToolCall:
    """The call of a turn started with `named_call_prefix(name)`; without a grammar the arguments are
    whatever the model wrote up to the closing tag (its JSON is not guaranteed)."""
    text = output.split(CLOSE, 1)[0]
    call = parse_call(named_call_prefix(name)[len(OPEN):] + text)
    if call is not None and call.name == name:
        return call
    arguments = text.rstrip()
    return ToolCall(new_call_id(), name, arguments[:-1] if arguments.endswith("}") else arguments)


# ---- the formats a deployment selects ---------------------------------------------------------------


class CallStream(Protocol):
    """Per-choice streaming state: text deltas in, content deltas and completed calls out, in order."""

    calls: list[ToolCall]

    def feed(self, delta: str) -> list[str | ToolCall]: ...

    def finish(self) -> list[str | ToolCall]: ...


class ToolCallFormat(ABC):
    """One model family's call syntax: how replies are parsed and what a grammar makes the model
    write for `tool_choice` required/named (structured_output builds its rules from the pieces)."""

    name: str
    markers: tuple[str, ...] = ()
    """Texts of markers that tokenizers may hold as special tokens (put back into decoded text)."""
    calls_open = ""
    """What opens the calls of a reply (before the first call)."""
    calls_close = ""
    """What closes the calls of a reply (after the last call)."""
    separator: str
    """Between two calls."""
    call_suffix: str
    """After one call's arguments."""

    @abstractmethod
    def call_prefix(self, name: str) -> str:
        """One call up to its arguments (the JSON object that follows)."""

    @abstractmethod
    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, calls) of a whole reply; content is None when only calls were written."""

    @abstractmethod
    def stream(self) -> CallStream:
        """A fresh streaming parser for one choice."""

    def new_id(self) -> str:
        return new_call_id()

    def named_call_prefix(self, name: str) -> str:
        """What the assistant turn is started with when `tool_choice` names `name`: the model writes the arguments."""
        return self.calls_open + self.call_prefix(name)

    def parse_named(self, name: str, output: str) -> ToolCall:
        """The call of a turn started with `named_call_prefix(name)`: the arguments are what the model
        wrote before the closing text (valid JSON under the grammar; kept as written otherwise)."""
        text = output.rstrip()
        closing = self.call_suffix + self.calls_close
        arguments = text[: -len(closing)] if text.endswith(closing) else text
        try:
            value = json.loads(arguments)
        except (ValueError, RecursionError):
            return ToolCall(self.new_id(), name, arguments)
        return ToolCall(self.new_id(), name,
                        value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


class HermesFormat(ToolCallFormat):
    """`<tool_call>{...}</tool_call>` (the module functions above; behaviour unchanged)."""

    name = ToolCallParser.HERMES
    separator = "\n"
    call_suffix = "}" + CLOSE

    def call_prefix(self, name: str) -> str:
        return OPEN + '{"name": ' + json.dumps(name) + ', "arguments": '

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        return parse(text)

    def stream(self) -> CallStream:
        return StreamingParser()

    def named_call_prefix(self, name: str) -> str:
        return named_call_prefix(name)

    def parse_named(self, name: str, output: str) -> ToolCall:
        return parse_named(name, output)


def _call_object(value: object, new_id: str) -> ToolCall | None:
    """A `{"name": str, "arguments"|"parameters": object}` value as a call, else None."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        return ToolCall(new_id, value["name"], arguments)
    if not isinstance(arguments, dict):
        return None
    return ToolCall(new_id, value["name"], json.dumps(arguments, ensure_ascii=False))


class _TrailingCallsFormat(ToolCallFormat):
    """Formats whose calls, once begun (at a marker), run to the end of the reply."""

    marker: str
    starts_bare = False
    """Whether a reply that begins (after whitespace) with `{` is a call section without the marker."""

    @abstractmethod
    def _calls(self, section: str) -> list[ToolCall] | None:
        """The calls of the text after the marker, or None when it is not wholly calls."""

    def _split(self, text: str) -> tuple[str, str] | None:
        """(content, call section) when the reply has a call section."""
        at = text.find(self.marker)
        if at != -1:
            return text[:at], text[at + len(self.marker):]
        if self.starts_bare and text.lstrip().startswith("{"):
            return "", text
        return None

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        split = self._split(text)
        calls = self._calls(split[1]) if split is not None else None
        if not calls:
            return text, []
        content = split[0].strip()
        return content or None, calls

    def stream(self) -> CallStream:
        return _TrailingCallsStream(self)


class _TrailingCallsStream:
    """Content until the marker (a tail that could begin it held back), then the rest held to the end."""

    def __init__(self, fmt: _TrailingCallsFormat) -> None:
        self._fmt = fmt
        self._buffer = ""
        self._seen_text = False  # a non-space character has been passed on (no bare call section)
        self._in_calls = False
        self.calls: list[ToolCall] = []

    def feed(self, delta: str) -> list[str | ToolCall]:
        self._buffer += delta
        if self._in_calls:
            return []
        marker = self._fmt.marker
        if not self._seen_text and self._fmt.starts_bare:
            stripped = self._buffer.lstrip()
            if not stripped:
                return []
            if stripped.startswith("{"):
                self._in_calls = True
                return []
        at = self._buffer.find(marker)
        out: list[str | ToolCall] = []
        if at != -1:
            if at:
                out.append(self._buffer[:at])
            self._buffer = self._buffer[at:]
            self._in_calls = True
            return out
        hold = next((n for n in range(min(len(marker) - 1, len(self._buffer)), 0, -1)
                     if marker.startswith(self._buffer[-n:])), 0)
        ready = self._buffer[: len(self._buffer) - hold]
        self._buffer = self._buffer[len(self._buffer) - hold:]
        if ready:
            self._seen_text = self._seen_text or bool(ready.strip())
            out.append(ready)
        return out

    def finish(self) -> list[str | ToolCall]:
        rest, self._buffer = self._buffer, ""
        if self._in_calls:
            content, calls = self._fmt.parse(rest)
            if calls:  # the section starts the buffer, so there is no content before it
                self.calls.extend(calls)
                return [content, *calls] if content else list(calls)
        return [rest] if rest else []


def _json_values(text: str, separator: str) -> list[object] | None:
    """The JSON values of `text` separated by `separator` (whitespace around them allowed), or None."""
    decoder = json.JSONDecoder()
    values: list[object] = []
    at = 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        try:
            value, at = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):
            return None
        values.append(value)
        rest = text[at:].lstrip()
        if not rest:
            return values
        if not rest.startswith(separator):
            return None
        at = len(text) - len(rest) + len(separator)


class Llama3JsonFormat(_TrailingCallsFormat):
    """Llama 3.x JSON calls, `;`-separated, bare or after `<|python_tag|>`."""

    name = ToolCallParser.LLAMA3_JSON
    marker = "<|python_tag|>"
    markers = (marker,)
    starts_bare = True
    separator = "; "
    call_suffix = "}"

    def call_prefix(self, name: str) -> str:
        # Llama 3.1's own template asks for "parameters"; both keys are read back.
        return '{"name": ' + json.dumps(name) + ', "parameters": '

    def _calls(self, section: str) -> list[ToolCall] | None:
        values = _json_values(section, ";")
        if values is None:
            return None
        calls = [_call_object(value, self.new_id()) for value in values]
        return None if any(call is None for call in calls) else calls  # type: ignore[return-value]


_MISTRAL_ID_ALPHABET = string.ascii_letters + string.digits
_MISTRAL_V11_CALL = re.compile(r"\s*([A-Za-z0-9_.-]{1,64})\s*(\{.*\})\s*", re.DOTALL)


class MistralFormat(_TrailingCallsFormat):
    """`[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]` (and the v11 `[TOOL_CALLS]name{...}`)."""

    name = ToolCallParser.MISTRAL
    marker = "[TOOL_CALLS]"
    markers = (marker,)
    calls_open = marker + " ["
    calls_close = "]"
    separator = ", "
    call_suffix = "}"

    def call_prefix(self, name: str) -> str:
        return '{"name": ' + json.dumps(name) + ', "arguments": '

    def new_id(self) -> str:
        # Mistral chat templates refuse a tool_call_id that is not 9 alphanumerics.
        return "".join(secrets.choice(_MISTRAL_ID_ALPHABET) for _ in range(9))

    def _calls(self, section: str) -> list[ToolCall] | None:
        calls: list[ToolCall] = []
        for part in section.split(self.marker):
            if not part.strip():
                continue
            if part.lstrip().startswith("["):
                values = _json_values(part, ",")  # one array
                if values is None or len(values) != 1 or not isinstance(values[0], list) or not values[0]:
                    return None
                found = [_call_object(value, self.new_id()) for value in values[0]]
            else:
                match = _MISTRAL_V11_CALL.fullmatch(part)
                if match is None:
                    return None
                try:
                    arguments = json.loads(match.group(2))
                except (ValueError, RecursionError):
                    return None
                found = [_call_object({"name": match.group(1), "arguments": arguments}, self.new_id())]
            if any(call is None for call in found):
                return None
            calls.extend(found)  # type: ignore[arg-type]
        return calls or None


# Keyed by the declaration's choices (inference/settings.py); tests/inference check that every choice has a format.
FORMATS: dict[str, type[ToolCallFormat]] = {
    HermesFormat.name: HermesFormat, Llama3JsonFormat.name: Llama3JsonFormat, MistralFormat.name: MistralFormat,
}


def get_format(name: str) -> ToolCallFormat:
    """The format `--tool-call-parser NAME` selects (ValueError naming the choices otherwise)."""
    if name not in FORMATS:
        raise ValueError(f"unknown tool call parser {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]()


def marker_token_ids(tokenizer: object, fmt: ToolCallFormat) -> dict[int, str]:
    """Ids of the format's markers that the tokenizer holds as single special tokens, with their text:
    decoding skips special tokens, so the server puts these back where the parser must see them."""
    special = set(getattr(tokenizer, "all_special_ids", ()))
    added = {token.content: token_id for token_id, token in getattr(tokenizer, "added_tokens_decoder", {}).items()
             if getattr(token, "special", False)}
    out: dict[int, str] = {}
    for marker in fmt.markers:
        token_id = added.get(marker)
        if token_id is None:
            converted = tokenizer.convert_tokens_to_ids(marker)  # type: ignore[attr-defined]
            token_id = converted if converted in special else None
        if token_id is not None:
            out[token_id] = marker
    return out
