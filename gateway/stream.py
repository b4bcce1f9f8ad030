"""Relaying one upstream stream to the client (server-sent events), metered and checked as it goes."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from . import metrics
from .flight import Flight
from .upstream import UpstreamStream

if TYPE_CHECKING:
    from .app import Gateway

SAFETY_STRIDE_CHARS = 200  # streamed output is checked (and held back) in steps of this many characters


class StreamRelay:
    """Relays one upstream SSE stream to the client, unbuffered unless output safety holds it back.

    It tracks the usage the upstream reports on every chunk (requested with continuous usage
    stats), strips what the client did not ask for, checks the output in steps when a safety
    provider is set (ending with `finish_reason: "content_filter"` when it blocks), and assembles
    the whole answer when it is to be cached.
    """

    def __init__(self, gateway: Gateway, flight: Flight, response: UpstreamStream, wants_usage: bool,
                 wants_continuous: bool, cache_key: str | None) -> None:
        self.gateway = gateway
        self.flight = flight
        self.response = response
        self.wants_usage = wants_usage
        self.wants_continuous = wants_continuous
        self.cache_key = cache_key
        self.texts: dict[int, str] = {}
        self.finish: dict[int, str | None] = {}
        self.checked: dict[int, int] = {}
        self.cacheable = cache_key is not None
        self.last: dict[str, Any] = {}

    def _forward(self, chunk: dict[str, Any]) -> str | None:
        usage = chunk.get("usage")
        if usage:
            self.flight.prompt_tokens = int(usage.get("prompt_tokens", self.flight.prompt_tokens))
            self.flight.completion_tokens = int(usage.get("completion_tokens", 0))
        choices = chunk.get("choices")
        if not choices:  # the usage-only chunk
            return f"data: {json.dumps(chunk)}\n\n" if self.wants_usage else None
        if not self.wants_continuous:
            chunk["usage"] = None
        return f"data: {json.dumps(chunk)}\n\n"

    def _track(self, chunk: dict[str, Any]) -> list[int]:
        """Accumulate choice texts; returns the indexes that finished in this chunk."""
        finished = []
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            delta = choice.get("delta")
            text = (delta or {}).get("content") if delta is not None else choice.get("text")
            if text:
                if self.flight.ttft_ms is None:
                    self.flight.ttft_ms = (time.monotonic() - self.flight.started) * 1000
                self.texts[index] = self.texts.get(index, "") + text
            if delta and (delta.get("tool_calls") or choice.get("logprobs")):
                self.cacheable = False  # only plain text answers are assembled for the cache
            if choice.get("finish_reason"):
                self.finish[index] = choice["finish_reason"]
                finished.append(index)
        self.last = chunk
        return finished

    def _due(self, finished: list[int]) -> list[int]:
        """Choices whose output must be checked now: finished, or a stride of unchecked text."""
        return [i for i, text in self.texts.items()
                if i in finished or len(text) - self.checked.get(i, 0) >= SAFETY_STRIDE_CHARS] + \
            [i for i in finished if i not in self.texts]

    async def _blocked_choice(self, indexes: list[int]) -> int | None:
        assert self.flight.caller is not None
        for index in indexes:
            text = self.texts.get(index, "")
            self.checked[index] = len(text)
            if await self.gateway.blocked_category(self.flight.caller, text, "output"):
                return index
        return None

    def _content_filter_chunk(self, index: int) -> str:
        chat = self.last.get("object") == "chat.completion.chunk"
        choice = ({"index": index, "delta": {}, "logprobs": None, "finish_reason": "content_filter"} if chat
                  else {"index": index, "text": "", "logprobs": None, "finish_reason": "content_filter"})
        chunk = {k: self.last.get(k) for k in ("id", "object", "created", "model")}
        return f"data: {json.dumps({**chunk, 'choices': [choice], 'usage': None})}\n\n"

    async def events(self) -> AsyncIterator[str]:
        flight = self.flight
        safety = self.gateway.safety is not None
        held: list[str] = []  # with output safety: chunks not yet released by a passing check
        try:
            async for line in self.response.lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    continue
                if "error" in chunk and "choices" not in chunk:  # the upstream failed mid-stream
                    flight.status = 500
                    yield "".join(held) + f"data: {payload}\n\n"
                    held.clear()
                    continue
                finished = self._track(chunk)
                out = self._forward(chunk)
                if not safety:
                    if out:
                        yield out
                    continue
                if out:
                    held.append(out)
                due = self._due(finished)
                if due:
                    blocked = await self._blocked_choice(due)
                    if blocked is not None:
                        flight.finish_reason = "content_filter"
                        self.cacheable = False
                        held.clear()
                        yield self._content_filter_chunk(blocked)
                        break
                if due or not chunk.get("choices"):
                    yield "".join(held)
                    held.clear()
            if held:
                yield "".join(held)
            if flight.finish_reason != "content_filter" and self.finish:
                flight.finish_reason = next(iter(self.finish.values()))
            yield "data: [DONE]\n\n"
            if self.cacheable and self.cache_key and self.finish and flight.finish_reason != "content_filter":
                await self._store()
        except BaseException:
            if flight.finish_reason is None:
                flight.status = 499  # the client left (or the upstream broke) before the end
            raise
        finally:
            # Nothing awaited here: in a stream cancelled by a client disconnect it would be
            # cancelled too. Closing the upstream (which aborts its generation) and the settlement
            # run in a task of their own.
            self.gateway.finish_later(flight, self.response)

    async def _store(self) -> None:
        chat = self.last.get("object") == "chat.completion.chunk"
        choices = []
        for index in sorted(self.texts.keys() | self.finish.keys()):
            text = self.texts.get(index, "")
            if chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": text},
                                "logprobs": None, "finish_reason": self.finish.get(index)})
            else:
                choices.append({"index": index, "text": text, "logprobs": None,
                                "finish_reason": self.finish.get(index)})
        whole = {"id": self.flight.request_id, "object": "chat.completion" if chat else "text_completion",
                 "created": self.last.get("created"), "model": self.last.get("model"), "choices": choices,
                 "usage": {"prompt_tokens": self.flight.prompt_tokens,
                           "completion_tokens": self.flight.completion_tokens,
                           "total_tokens": self.flight.prompt_tokens + self.flight.completion_tokens}}
        assert self.cache_key is not None
        await self.gateway.cache.put(self.cache_key, whole)
        metrics.CACHE.labels("store").inc()
