"""The response cache's key and eligibility, and key hashing: pure functions, no services."""

from __future__ import annotations

import json

import openai

from gateway import keys as api_keys
from gateway.cache import cache_key, cacheable, replay_stream

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 5}


def test_cache_key_ignores_transport_fields_and_key_order_but_nothing_else() -> None:
    base = cache_key("t", "m@1", BODY)
    assert cache_key("t", "m@1", {**BODY, "stream": True, "stream_options": {"include_usage": True},
                                  "user": "u"}) == base
    assert cache_key("t", "m@1", dict(reversed(list(BODY.items())))) == base
    assert cache_key("other", "m@1", BODY) != base  # never shared across tenants
    assert cache_key("t", "m@2", BODY) != base  # another model revision
    for change in ({"max_tokens": 6}, {"seed": 1}, {"tools": []}, {"response_format": {"type": "json_object"}},
                   {"messages": [{"role": "user", "content": "hi!"}]}):
        assert cache_key("t", "m@1", {**BODY, **change}) != base, change
    prefix, digest = base.split(":cache:")
    assert prefix == "ifg:{t:t}" and len(digest) == 64 and int(digest, 16) >= 0  # a digest, no request text


def test_only_deterministic_requests_without_no_store_or_echo_are_cacheable() -> None:
    assert cacheable(BODY, None)
    assert cacheable({**BODY, "temperature": 0.7, "seed": 3}, None)
    assert not cacheable({k: v for k, v in BODY.items() if k != "temperature"}, None)  # default 1.0, no seed
    assert not cacheable(BODY, "no-store")
    assert not cacheable(BODY, "private, No-Store")
    assert not cacheable({**BODY, "echo": True}, None)
    assert not cacheable({**BODY, "logprobs": True}, None)


def test_a_cached_chat_answer_replays_as_a_stream_the_sdk_reads() -> None:
    cached = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    events = list(replay_stream(cached, "gw-1", include_usage=True))
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [openai.types.chat.ChatCompletionChunk.model_validate(json.loads(e[6:])) for e in events[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == 5 and all(c.id == "gw-1" for c in chunks)


def test_keys_have_a_public_id_and_a_secret_and_only_well_formed_keys_parse() -> None:
    key_id, key = api_keys.new_key()
    assert api_keys.key_id_of(key) == key_id and len(key) == 4 + 12 + 1 + 43
    assert api_keys.new_key()[1] != key
    for bad in (key[:-1], key + "x", key.replace("ifg_", "ifx_"), "", f"ifg_{key_id}"):
        assert api_keys.key_id_of(bad) is None
    pepper = b"p" * 32
    assert api_keys.matches(pepper, key, api_keys.key_hash(pepper, key))
    assert not api_keys.matches(pepper, key[:-1] + ("A" if key[-1] != "A" else "B"), api_keys.key_hash(pepper, key))
