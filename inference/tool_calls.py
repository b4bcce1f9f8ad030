"""Tool calls in model output: the Hermes format, parsed whole or while streaming.

Hermes-style chat templates (NousResearch Hermes, Qwen2.5, Qwen3, and `inference.model_factory`'s
template) tell the model to call a function by writing
``<tool_call>{"name": <name>, "arguments": <JSON object>}</tool_call>``; vLLM's `hermes` tool parser
reads the same. Text before the first call is the message content. A block that is not a JSON
object with a string `name` is left in the content (the model wrote something else), as vLLM does.

Streaming: content is passed on as it comes, except a tail that could be the start of
``<tool_call>`` (held back until it cannot be); a call is emitted once its closing tag arrives, as
one `tool_calls` delta carrying id, name and the whole arguments string (the OpenAI delta protocol
lets clients concatenate argument fragments; one fragment is a valid stream).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

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
