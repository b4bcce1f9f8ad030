"""HTTP side: wait for an OpenAI-compatible server, stream one `/v1/completions` request."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from ..bench.errors import BenchmarkError
from ..bench.metrics import RequestResult
from ..bench.workload import Prompt

# Readiness endpoints in order of preference: our server's (and TGI's/vLLM's) public probe first,
# then the OpenAI model list, which every compatible server has (it may need the API key).
READINESS_PATHS: tuple[str, ...] = ("/ready", "/health", "/v1/models")


class ServerNotReadyError(BenchmarkError):
    """The server did not answer a readiness probe with 200 before the deadline."""


def auth_headers(api_key: str | None) -> dict[str, str]:
    """Bearer auth as the OpenAI API expects; none when no key is given."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def wait_until_ready(
    base_url: str,
    timeout_s: float,
    api_key: str | None = None,
    poll_interval_s: float = 0.5,
    is_alive: Any = None,
) -> str:
    """Poll the readiness endpoints until one answers 200; returns the path that did.

    `is_alive` (optional, no arguments) lets a caller abort early when the server process it
    launched has already exited, instead of waiting out the whole timeout.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    async with httpx.AsyncClient(base_url=base_url, headers=auth_headers(api_key), timeout=5.0) as client:
        while True:
            for path in READINESS_PATHS:
                try:
                    response = await client.get(path)
                except httpx.HTTPError as exc:
                    last = f"{path}: {type(exc).__name__}: {exc}"
                    break  # the server is not listening yet; no point trying the other paths
                if response.status_code == 200:
                    return path
                last = f"{path}: HTTP {response.status_code}"
            if is_alive is not None and not is_alive():
                raise ServerNotReadyError(f"server process exited before it was ready ({last})")
            if time.monotonic() >= deadline:
                raise ServerNotReadyError(f"{base_url} not ready after {timeout_s:g}s (last: {last})")
            await asyncio.sleep(poll_interval_s)


@dataclass(frozen=True)
class CompletionSettings:
    """The request body fields shared by every benchmark request."""

    model: str
    output_len: int
    temperature: float = 0.0
    ignore_eos: bool = True

    def body(self, prompt: Prompt) -> dict[str, Any]:
        """An OpenAI completions body: fixed `max_tokens`, ignore-eos, streamed usage."""
        return {
            "model": self.model,
            "prompt": prompt.prompt,
            "max_tokens": self.output_len,
            "temperature": self.temperature,
            # vLLM's extension, also ours: generate exactly max_tokens even past EOS.
            "ignore_eos": self.ignore_eos,
            "stream": True,
            "stream_options": {"include_usage": True},
        }


def _error_message(status: int, body: bytes) -> str:
    """The OpenAI-style `error.message` when there is one, else the start of the body."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode("utf-8", "replace")
    return f"HTTP {status}: {message}"


async def stream_completion(
    client: httpx.AsyncClient,
    prompt: Prompt,
    settings: CompletionSettings,
    run_start: float,
) -> RequestResult:
    """Send one streamed completion and time it; never raises for server or network errors.

    Every SSE chunk carrying `choices` counts as one token event (chunk-level timing, like vLLM:
    a chunk's text may be empty when a token is a partial UTF-8 sequence, but it still marks a
    token). The token counts come from the final `usage` chunk when the server sends one.
    """
    result = RequestResult(success=False, prompt_len=prompt.prompt_len, expected_output_len=settings.output_len)
    start = time.perf_counter()
    result.start_offset_s = start - run_start
    chunks = 0
    last_event = start
    usage: dict[str, Any] | None = None
    try:
        async with client.stream("POST", "/v1/completions", json=settings.body(prompt)) as response:
            if response.status_code != 200:
                result.error = _error_message(response.status_code, await response.aread())
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, SSE comments / keep-alives
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = f"stream error: {chunk['error'].get('message', chunk['error'])}"
                    return result
                if chunk.get("choices"):
                    if chunks == 0:
                        result.ttft_s = now - start
                    else:
                        result.itl_s.append(now - last_event)
                    chunks += 1
                    last_event = now
                if chunk.get("usage"):
                    usage = chunk["usage"]
        result.latency_s = time.perf_counter() - start
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    if chunks == 0:
        result.error = "stream ended without any token"
        return result
    result.output_len = int(usage["completion_tokens"]) if usage else chunks
    if usage and "prompt_tokens" in usage:
        result.prompt_len = int(usage["prompt_tokens"])
    result.success = True
    return result
