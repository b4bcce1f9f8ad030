"""Issue 21: the gateway counts prompts in its own process with the model server's own tokenizer and chat
template (fetched from `GET /tokenizer`, pinned by hash), and exactly as the server's /tokenize counts them;
whatever it cannot count with certainty goes to /tokenize, never a guess."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest

from gateway.counting import LOCAL_MAX_BODY_BYTES, LocalCounter
from gateway.upstream import Upstream
from tests.gateway.conftest import MAX_MODEL_LEN, MODEL, UPSTREAM_KEY, create_key, create_tenant

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city — «quoted» 😀",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}},
         {"type": "function", "function": {"name": "noop"}}]

CHATS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "Tell me about tensor parallelism"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "tools": TOOLS},
    {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "call_1", "type": "function",
                       "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"days\": 2}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": -3}"},
                  {"role": "user", "content": "And tomorrow?"}], "tools": TOOLS},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "part one, "},
                                               {"type": "text", "text": "part two"}]}]},
    {"messages": [{"role": "developer", "content": "Rules."}, {"role": "user", "name": "ana", "content": "x"}]},
    {"messages": [{"role": "user", "content": "Complete:"}, {"role": "assistant", "content": "Sure, the"}],
     "add_generation_prompt": False, "continue_final_message": True},
    {"messages": [{"role": "user", "content": "no prompt"}], "add_generation_prompt": False},
    {"messages": [{"role": "user", "content": "  déjà\u00a0vu\t\n\n<s></s><|user|> 1024 \u200b\U0001F600\r\n"}]},
    {"messages": [{"role": "user", "content": ""}], "tools": []},
    {"messages": [{"role": "assistant", "content": "unusual first turn"}], "unknown_field": 1},
]

PROMPTS: list[Any] = [
    "The gateway adds", "", " leading space", "<s> special </s> text <|assistant|>", "é" * 300 + " 😀\n\t",
    ["one", "two prompts", ""], [1, 2, 3, 4], [[5, 6], "mixed", [7]],
]

# Requests the server refuses (or the gateway cannot count with certainty): in-process gives None.
UNCOUNTABLE: list[tuple[str, dict[str, Any]]] = [
    ("chat", {"messages": []}),
    ("chat", {"messages": [{"role": "wizard", "content": "x"}]}),
    ("chat", {"messages": [{"role": "user", "content": 5}]}),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
    ("chat", {"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": "yes"}),
    ("chat", {"messages": [{"role": "user", "content": "x"}], "continue_final_message": True}),
    ("chat", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}),
    ("completions", {"prompt": None}), ("completions", {"prompt": []}), ("completions", {"prompt": [1.5]}),
    ("completions", {"prompt": [True, 2]}), ("completions", {"prompt": {"text": "x"}}),
]


def tokenize(url: str, payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/tokenize", json=payload, headers={"Authorization": f"Bearer {UPSTREAM_KEY}"},
                      timeout=30)


def server_count(url: str, endpoint: str, body: dict[str, Any]) -> tuple[int, int, int]:
    """What the gateway's /tokenize path counts for `body` (the same payloads app.count_prompt sends)."""
    if endpoint == "chat":
        payload = {k: body[k] for k in ("messages", "tools", "add_generation_prompt", "continue_final_message")
                   if k in body}
        answer = tokenize(url, payload)
        assert answer.status_code == 200, answer.text
        return answer.json()["count"], 1, answer.json()["max_model_len"]
    prompt = body["prompt"]
    prompts = [prompt] if isinstance(prompt, str) or all(isinstance(p, int) for p in prompt) else prompt
    total, max_len = 0, 0
    for p in prompts:
        if isinstance(p, str):
            answer = tokenize(url, {"prompt": p}).json()
            total, max_len = total + answer["count"], answer["max_model_len"]
        else:
            total += len(p)
    return total, len(prompts), max_len or tokenize(url, {"prompt": ""}).json()["max_model_len"]


def loaded_upstream(url: str, key: str | None = UPSTREAM_KEY) -> Upstream:
    async def load() -> Upstream:
        upstream = Upstream(MODEL, url, key, count_locally=True)
        try:
            await upstream.load_counter()
        finally:
            await upstream.close()
        return upstream

    return asyncio.run(load())


@pytest.fixture(scope="module")
def counter(model_server: str) -> LocalCounter:
    upstream = loaded_upstream(model_server)
    assert upstream.counter is not None
    return upstream.counter


@pytest.mark.parametrize("body", CHATS, ids=range(len(CHATS)))
def test_a_chat_prompt_counts_in_process_exactly_as_the_server_counts_it(
        counter: LocalCounter, model_server: str, body: dict[str, Any]) -> None:
    assert counter.count("chat", body) == server_count(model_server, "chat", body)


@pytest.mark.parametrize("prompt", PROMPTS, ids=range(len(PROMPTS)))
def test_a_completion_prompt_counts_in_process_exactly_as_the_server_counts_it(
        counter: LocalCounter, model_server: str, prompt: Any) -> None:
    body = {"prompt": prompt}
    assert counter.count("completions", body) == server_count(model_server, "completions", body)


def test_the_count_is_the_prompt_the_server_charges(counter: LocalCounter, model_server: str) -> None:
    headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    small = {"messages": [{"role": "user", "content": "Hi"}], "tools": [TOOLS[1]]}
    fitting = [b for b in [*CHATS, small] if counter.count("chat", b)[0] < MAX_MODEL_LEN - 1]
    assert len(fitting) >= 6
    for body in fitting:
        answer = httpx.post(f"{model_server}/v1/chat/completions", json={**body, "max_tokens": 1}, headers=headers,
                            timeout=60)
        assert answer.status_code == 200, answer.text
        assert counter.count("chat", body)[0] == answer.json()["usage"]["prompt_tokens"]
    body = {"prompt": ["The gateway adds", "two"], "max_tokens": 1}
    answer = httpx.post(f"{model_server}/v1/completions", json=body, headers=headers, timeout=60)
    assert counter.count("completions", body)[0] == answer.json()["usage"]["prompt_tokens"]


@pytest.mark.parametrize(("endpoint", "body"), UNCOUNTABLE, ids=range(len(UNCOUNTABLE)))
def test_what_the_server_refuses_is_left_to_tokenize(counter: LocalCounter, endpoint: str,
                                                     body: dict[str, Any]) -> None:
    assert counter.count(endpoint, body) is None


def test_an_override_chat_template_is_the_servers_too(tiny_model_dir_for_fakes: Any) -> None:
    from inference.chat_template import load_chat_template
    from inference.server import create_app
    from tests.inference.fakes import FakeEngine, load_tokenizer, serve_in_thread

    tokenizer = load_tokenizer(tiny_model_dir_for_fakes)
    template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
                "{% if tools %}{{ tools | tojson }}{% endif %}{% if add_generation_prompt %}[assistant]{% endif %}")
    app = create_app(FakeEngine(tokenizer, max_model_len=300), tokenizer, api_keys=None,
                     chat_template=load_chat_template(template))
    with serve_in_thread(app) as url:
        upstream = loaded_upstream(url, None)
        assert upstream.counter is not None and upstream.counter.template == template
        for body in CHATS:
            payload = {k: body[k] for k in ("messages", "tools", "add_generation_prompt", "continue_final_message")
                       if k in body}
            expected = httpx.post(f"{url}/tokenize", json=payload).json()["count"]
            assert upstream.counter.count("chat", body)[0] == expected


@pytest.fixture(scope="module")
def tiny_model_dir_for_fakes(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from inference.model_factory import write_model

    return write_model(tmp_path_factory.mktemp("tiny_for_fakes"), "tiny", seed=0)


# ---- when the in-process copy cannot be trusted ---------------------------------------------------

def test_no_tokenizer_when_the_server_cannot_serve_it_or_refuses_the_key(
        model_server: str, tiny_model_dir_for_fakes: Any) -> None:
    from inference.server import create_app
    from tests.inference.fakes import FakeEngine, load_tokenizer, serve_in_thread

    assert loaded_upstream(model_server, "wrong-key").counter is None
    tokenizer = load_tokenizer(tiny_model_dir_for_fakes)
    app = create_app(FakeEngine(tokenizer), tokenizer, api_keys=None)
    app.state.server.tokenizer_bundle = app.state.server.tokenizer_hash = None  # e.g. an older server
    with serve_in_thread(app) as url:
        assert loaded_upstream(url, None).counter is None
    assert loaded_upstream("http://127.0.0.1:9", None).counter is None  # nothing listens


def test_another_hash_or_none_drops_the_copy_at_once_and_reloads_the_servers(model_server: str) -> None:
    async def scenario() -> None:
        upstream = Upstream(MODEL, model_server, UPSTREAM_KEY, count_locally=True)
        try:
            assert await upstream.load_counter()
            good = upstream.counter
            assert good is not None
            upstream.observe(good.hash)
            assert upstream.counter is good and upstream._loading is None
            server_hash = good.hash
            good.hash = "0" * 64  # as if the server had since been upgraded to another tokenizer
            await upstream.post("/tokenize", {"prompt": "x"})  # its answer names its current hash
            assert upstream.counter is None  # no count with the old copy from now on
            assert upstream._loading is None  # within the reload cooldown of the load above: not yet
            upstream._last_load -= 60
            upstream.observe(None)  # an answer without a hash never keeps nor loads a copy
            assert upstream.counter is None and upstream._loading is None
            await upstream.post("/tokenize", {"prompt": "x"})
            assert upstream._loading is not None
            await upstream._loading
            assert upstream.counter is not None and upstream.counter.hash == server_hash
        finally:
            await upstream.close()

    asyncio.run(scenario())


# ---- through the gateway ------------------------------------------------------------------------

def _metric(replica_url: str, how: str) -> float:
    text = httpx.get(f"{replica_url}/metrics").text
    match = re.search(rf'^inferforge_gateway_prompt_counts_total{{how="{how}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.fixture()
def counted_key(database: str) -> str:
    create_tenant(database, "counted", "--tpm", "100000")
    return create_key(database, "counted")


def _remaining_tokens(replica_url: str, key: str, path: str, body: dict[str, Any]) -> int:
    answer = httpx.post(f"{replica_url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    return int(answer.headers["x-ratelimit-remaining-tokens"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["local", "upstream"])
def test_the_gateway_reserves_the_exact_count_either_way(database: str, redis_url: str, start_gateway: Any,
                                                         counted_key: str, model_server: str, mode: str) -> None:
    replica = start_gateway(database, redis_url, "--prompt-count", mode)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Call it"}, {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "noop", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"}], "tools": [TOOLS[1]], "max_tokens": 2}
    prompt_count = server_count(model_server, "chat", chat)[0]
    # The first request of the window: remaining = tpm - (prompt + max_tokens) reserved at admission.
    assert _remaining_tokens(replica.url, counted_key, "/v1/chat/completions", chat) == 100000 - prompt_count - 2
    completion = {"model": MODEL, "prompt": ["The gateway adds", "x"], "max_tokens": 1}
    assert _remaining_tokens(replica.url, counted_key, "/v1/completions", completion) > 0
    big = {"model": MODEL, "prompt": "a " * (LOCAL_MAX_BODY_BYTES // 2), "max_tokens": 1}
    refused = httpx.post(f"{replica.url}/v1/completions", json=big, timeout=60,
                         headers={"Authorization": f"Bearer {counted_key}"})
    assert refused.status_code == 400  # longer than the context: the server's answer, counted by it
    bad = httpx.post(f"{replica.url}/v1/chat/completions", timeout=60,
                     json={"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
                     headers={"Authorization": f"Bearer {counted_key}"})
    assert bad.status_code == 400 and "role" in bad.json()["error"]["message"]
    if mode == "local":
        assert (_metric(replica.url, "local"), _metric(replica.url, "upstream")) == (2, 2)
    else:
        assert (_metric(replica.url, "local"), _metric(replica.url, "upstream")) == (0, 4)


# ---- the image --------------------------------------------------------------------------------

def test_the_count_runs_from_the_images_files_alone_without_torch(tmp_path: Any, model_server: str,
                                                                 counter: LocalCounter) -> None:
    import shutil
    import subprocess
    import sys

    from tests.gateway.conftest import REPO

    dockerfile = (REPO / "gateway" / "Dockerfile").read_text()
    copy = re.search(r"^COPY [^\n]*?((?:inference/\S+\s+(?:\\\n\s*)?)+)/app/inference/$", dockerfile, re.M)
    assert copy, "the Dockerfile copies no inference/ modules"
    files = copy.group(1).replace("\\", " ").split()
    shutil.copytree(REPO / "gateway", tmp_path / "gateway")
    (tmp_path / "inference").mkdir()
    for name in files:
        shutil.copy(REPO / name, tmp_path / name)
    bundle = httpx.get(f"{model_server}/tokenizer", headers={"Authorization": f"Bearer {UPSTREAM_KEY}"}).text
    (tmp_path / "bundle.json").write_text(bundle)
    script = ("import json, sys; sys.modules['torch'] = None\n"  # `import torch` raises ImportError
              "import gateway.serve, gateway.counting\n"
              "c = gateway.counting.LocalCounter.from_bundle(json.load(open('bundle.json')))\n"
              "assert not [m for m in sys.modules if m.startswith('torch') and sys.modules[m] is not None]\n"
              "print(json.dumps([c.count('chat', b) for b in json.loads(sys.argv[1])]))")
    result = subprocess.run([sys.executable, "-c", script, json.dumps(CHATS)], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                            "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == [list(counter.count("chat", b)) for b in CHATS]


def test_the_direct_encoding_is_used_only_in_transformers_own_state(counter: LocalCounter) -> None:
    assert counter._backend is not None  # the test model's tokenizer runs transformers' own encode
    text = "The platform serves language models inside a private network. " * 4
    full = len(counter.tokenizer.encode(text))
    backend = counter.tokenizer.backend_tokenizer
    backend.enable_truncation(5)  # a state transformers' encode would undo: the count must not be cut
    try:
        assert counter.count("completions", {"prompt": text})[0] == full > 5
        assert backend.truncation is None  # transformers' encode counted it (and reset the backend)
    finally:
        backend.no_truncation()
