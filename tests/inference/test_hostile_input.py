"""Issue 11 item 1: any client input gets a 4xx naming the field, never a 500.

Lone UTF-16 surrogates (as a JSON escape and as raw bytes), JSON nested far too deep, and integers
with thousands of digits, in every place a client can put them; error messages never echo a huge
value whole. Runs the real HTTP stack over the scripted FakeEngine (no model needed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.inference.fakes import RunningFake, fake_server, load_tokenizer

# Longest error message we accept: enough to name every field and say what is allowed, far less
# than any hostile value (a message quoting a 4,300-digit number is itself a defect).
MAX_MESSAGE_CHARS = 600
HUGE = "9" * 4301  # one digit past CPython's int/str conversion limit


@pytest.fixture(scope="module")
def fake(tiny_model_dir: Path) -> Iterator[RunningFake]:
    with fake_server(load_tokenizer(tiny_model_dir), max_model_len=64) as running:
        yield running


@pytest.fixture()
def client(fake: RunningFake) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=30) as c:
        yield c
        # The server keeps serving after every hostile case.
        ok = c.post("/v1/completions", json={"prompt": "still serving", "max_tokens": 2})
        assert ok.status_code == 200, ok.text


def post_raw(client: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return client.post(path, content=body, headers={"content-type": "application/json"})


def assert_400_naming(response: httpx.Response, *words: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert len(error["message"]) <= MAX_MESSAGE_CHARS, error["message"][:200]
    for word in words:
        assert word in error["message"], error["message"]
    return error


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

SURROGATE_CASES = [
    # (id, path, raw JSON body, field the message must name)
    ("prompt-escape", COMPLETIONS, rb'{"prompt":"\ud800","max_tokens":1}', "prompt"),
    ("prompt-raw-bytes", COMPLETIONS, b'{"prompt":"\xed\xa0\x80","max_tokens":1}', "prompt"),
    ("prompt-low-surrogate-mid-text", COMPLETIONS, rb'{"prompt":"ab\udc00cd","max_tokens":1}', "prompt"),
    ("chat-content-escape", CHAT, rb'{"messages":[{"role":"user","content":"\ud800"}]}', "messages.0.content"),
    ("chat-content-raw-bytes", CHAT, b'{"messages":[{"role":"user","content":"hi \xed\xa0\x80"}]}',
     "messages.0.content"),
    ("chat-text-part", CHAT, rb'{"messages":[{"role":"user","content":[{"type":"text","text":"\udbff"}]}]}',
     "messages.0.content.0.text"),
    ("stop", COMPLETIONS, rb'{"prompt":"hi","stop":["\ud800"]}', "stop.0"),
    ("model", COMPLETIONS, rb'{"prompt":"hi","model":"\ud800"}', "model"),
    ("key", COMPLETIONS, rb'{"prompt":"hi","\ud800":1}', "body"),
]


@pytest.mark.parametrize(("path", "body", "field"), [c[1:] for c in SURROGATE_CASES],
                         ids=[c[0] for c in SURROGATE_CASES])
def test_lone_surrogate_is_a_400_naming_the_field(client: httpx.Client, path: str, body: bytes,
                                                  field: str) -> None:
    error = assert_400_naming(post_raw(client, path, body), field, "surrogate")
    assert error["code"] == "invalid_unicode"


@pytest.mark.parametrize("where", ["prompt", "unknown_field", "stop"])
@pytest.mark.parametrize("depth", [100, 1_000, 100_000])
def test_deeply_nested_json_is_a_400(client: httpx.Client, where: str, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    body = f'{{"prompt":"hi","{where}":{nested}}}' if where != "prompt" else f'{{"prompt":{nested}}}'
    error = assert_400_naming(post_raw(client, COMPLETIONS, body.encode()), "nested")
    assert error["code"] == "invalid_json"


NUMERIC_FIELDS = [
    # (path, field, body template with {n} for the number)
    (COMPLETIONS, "max_tokens", '{{"prompt":"hi","max_tokens":{n}}}'),
    (COMPLETIONS, "temperature", '{{"prompt":"hi","temperature":{n}}}'),
    (COMPLETIONS, "top_p", '{{"prompt":"hi","top_p":{n}}}'),
    (COMPLETIONS, "seed", '{{"prompt":"hi","seed":{n}}}'),
    (COMPLETIONS, "n", '{{"prompt":"hi","n":{n}}}'),
    (COMPLETIONS, "presence_penalty", '{{"prompt":"hi","presence_penalty":{n}}}'),
    (COMPLETIONS, "prompt.1", '{{"prompt":[1,{n}]}}'),
    (CHAT, "max_completion_tokens", '{{"messages":[{{"role":"user","content":"hi"}}],"max_completion_tokens":{n}}}'),
    (CHAT, "max_tokens", '{{"messages":[{{"role":"user","content":"hi"}}],"max_tokens":-{n}}}'),
]


@pytest.mark.parametrize(("path", "field", "template"), NUMERIC_FIELDS, ids=[f[1] for f in NUMERIC_FIELDS])
@pytest.mark.parametrize("digits", [4301, 10_000, 100], ids=["4301-digits", "10000-digits", "100-digits"])
def test_huge_integer_is_a_400_naming_the_field_without_echoing_it(client: httpx.Client, path: str, field: str,
                                                                   template: str, digits: int) -> None:
    body = template.format(n="7" * digits)
    error = assert_400_naming(post_raw(client, path, body.encode()), field)
    assert "7" * 30 not in error["message"]


def test_integer_below_the_parse_limit_is_not_echoed_whole(client: httpx.Client) -> None:
    # 60 digits parses as an integer; the range error still must not print it whole.
    big = "-" + "8" * 60
    error = assert_400_naming(post_raw(client, COMPLETIONS, f'{{"prompt":"hi","max_tokens":{big}}}'.encode()),
                              "max_tokens")
    assert "8" * 30 not in error["message"]


def test_huge_token_id_is_not_echoed_whole(client: httpx.Client) -> None:
    big = "6" * 60
    error = assert_400_naming(post_raw(client, COMPLETIONS, f'{{"prompt":[1,{big}]}}'.encode()), "prompt")
    assert "6" * 30 not in error["message"]


def test_long_model_name_is_not_echoed_whole(client: httpx.Client) -> None:
    response = client.post(COMPLETIONS, json={"prompt": "hi", "model": "m" * 100_000})
    assert response.status_code == 404
    assert len(response.json()["error"]["message"]) <= MAX_MESSAGE_CHARS


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_json_number_literals_are_a_400(client: httpx.Client, literal: str) -> None:
    response = post_raw(client, COMPLETIONS, f'{{"prompt":"hi","temperature":{literal}}}'.encode())
    assert_400_naming(response, literal)


def test_hostile_input_never_logs_a_traceback(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    bodies = [rb'{"prompt":"\ud800"}', b'{"prompt":"\xed\xa0\x80"}', ("[" * 5000).encode(),
              f'{{"prompt":"hi","max_tokens":{HUGE}}}'.encode(), json.dumps({"prompt": "x" * 10}).encode()]
    with caplog.at_level("INFO", logger="inference.server"):
        for body in bodies:
            assert post_raw(client, COMPLETIONS, body).status_code < 500
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]
