"""The response cache: opt-in per tenant, exact match on the canonical request, deterministic only.

The key is a SHA-256 of the tenant, the model and its revision, and the request with its transport
fields removed (`stream`, `stream_options`, `user`) and the rest canonical (sorted keys, compact):
messages, tools, response format, sampling parameters and seed all count. The Redis key holds only
that digest, never prompt text, and the tenant in its name (one tenant never reads another's
entries). Only greedy (`temperature: 0`) or seeded requests are cached, never `echo` (its answer
repeats the prompt) nor anything with `Cache-Control: no-store`. A hit on a streaming request is
replayed as a stream.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .limits import tenant_tag

TRANSPORT_FIELDS = frozenset({"stream", "stream_options", "user"})
DEFAULT_TTL_S = 3600


def cacheable(body: dict[str, Any], cache_control: str | None) -> bool:
    if cache_control and "no-store" in cache_control.lower():
        return False
    if body.get("echo") or body.get("logprobs") or body.get("top_logprobs"):
        return False
    temperature = body.get("temperature", 1.0)
    return temperature == 0 or body.get("seed") is not None


def cache_key(tenant: str, model_revision: str, body: dict[str, Any]) -> str:
    canonical = {k: v for k, v in body.items() if k not in TRANSPORT_FIELDS}
    digest = hashlib.sha256(json.dumps([tenant, model_revision, canonical], sort_keys=True,
                                       separators=(",", ":")).encode()).hexdigest()
    return f"{tenant_tag(tenant)}:cache:{digest}"


class ResponseCache:
    def __init__(self, client: aioredis.Redis, ttl_s: int = DEFAULT_TTL_S) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    async def get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = await self.redis.get(key)
        except RedisError:
            return None  # a cache that is down is a miss, never an error
        return json.loads(raw) if raw else None

    async def put(self, key: str, response: dict[str, Any]) -> None:
        try:
            await self.redis.set(key, json.dumps(response, separators=(",", ":")), ex=self.ttl_s)
        except RedisError:
            pass


def replay(response: dict[str, Any], request_id: str) -> dict[str, Any]:
    """A cached whole response under this request's id and time."""
    return {**response, "id": request_id, "created": int(time.time())}


def replay_stream(response: dict[str, Any], request_id: str, include_usage: bool) -> Iterator[str]:
    """A cached whole response as the SSE chunks a streamed request expects."""
    created = int(time.time())
    chat = response.get("object") == "chat.completion"
    obj = "chat.completion.chunk" if chat else "text_completion"
    base = {"id": request_id, "object": obj, "created": created, "model": response.get("model")}
    for choice in response.get("choices", []):
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
            if message.get("tool_calls"):
                delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]
            first = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
            last = {"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}
        else:
            first = {"index": index, "text": choice.get("text", ""), "logprobs": None, "finish_reason": None}
            last = {"index": index, "text": "", "logprobs": None, "finish_reason": choice.get("finish_reason")}
        yield f"data: {json.dumps({**base, 'choices': [first], 'usage': None})}\n\n"
        yield f"data: {json.dumps({**base, 'choices': [last], 'usage': None})}\n\n"
    if include_usage:
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': response.get('usage')})}\n\n"
    yield "data: [DONE]\n\n"
