"""Issue 12 item 6: `/tokenize` and `/detokenize` (vLLM's shapes), `--chat-template`, and EOS ids
from generation_config.json."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference.auth import APIKeys
from inference.chat_template import load_chat_template
from tests.inference.fakes import FakeEngine, RunningFake, fake_server, load_tokenizer, serve_in_thread

REPO = Path(__file__).resolve().parents[2]
KEY = "k" * 32
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The platform"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def fake(tokenizer: Any) -> Iterator[RunningFake]:
    with fake_server(tokenizer, api_keys=APIKeys([KEY]), max_model_len=300) as running:
        yield running


@pytest.fixture()
def client(fake: RunningFake) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def test_tokenize_a_prompt_the_way_completions_encode_it(client: httpx.Client, tokenizer: Any) -> None:
    response = client.post("/tokenize", json={"prompt": "The platform serves", "return_token_strs": True})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = tokenizer.encode("The platform serves")
    assert body == {"count": len(expected), "max_model_len": 300, "tokens": expected,
                    "token_strs": tokenizer.convert_ids_to_tokens(expected)}
    plain = client.post("/tokenize", json={"prompt": "The platform serves", "add_special_tokens": False}).json()
    assert plain["tokens"] == tokenizer.encode("The platform serves", add_special_tokens=False)
    assert plain["token_strs"] is None


def test_tokenize_messages_gives_exactly_the_chat_prompt(client: httpx.Client, fake: RunningFake) -> None:
    tokens = client.post("/tokenize", json={"messages": MESSAGES}).json()["tokens"]
    assert client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1}).status_code == 200
    assert tokens == fake.engine.requests[-1].prompt_token_ids


def test_tokenize_messages_with_tools_counts_the_rendered_tools(client: httpx.Client, fake: RunningFake) -> None:
    # The gateway reserves this count before admitting a chat request with tools.
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                "parameters": {"type": "object",
                                                               "properties": {"city": {"type": "string"}}}}}]
    with_tools = client.post("/tokenize", json={"messages": MESSAGES, "tools": tools}).json()["tokens"]
    assert client.post("/v1/chat/completions", json={"messages": MESSAGES, "tools": tools,
                                                     "max_tokens": 1}).status_code == 200
    assert with_tools == fake.engine.requests[-1].prompt_token_ids
    assert len(with_tools) > len(client.post("/tokenize", json={"messages": MESSAGES}).json()["tokens"])


def test_tokenize_continue_final_message(client: httpx.Client, tokenizer: Any) -> None:
    messages = [*MESSAGES, {"role": "assistant", "content": "Sure, it"}]
    body = {"messages": messages, "add_generation_prompt": False, "continue_final_message": True}
    tokens = client.post("/tokenize", json=body).json()["tokens"]
    assert tokenizer.decode(tokens).endswith("<|assistant|>\nSure, it")
    both = client.post("/tokenize", json={**body, "add_generation_prompt": True})
    assert both.status_code == 400
    assert "continue_final_message" in both.json()["error"]["message"]


def test_detokenize_round_trips(client: httpx.Client, tokenizer: Any) -> None:
    ids = tokenizer.encode(" The platform serves", add_special_tokens=False)
    response = client.post("/detokenize", json={"tokens": ids})
    assert response.status_code == 200, response.text
    assert response.json() == {"prompt": " The platform serves"}


@pytest.mark.parametrize(("path", "body", "words"), [
    ("/detokenize", {"tokens": [1, 10**6]}, ["tokens.1", "[0, 512)"]),
    ("/detokenize", {"tokens": [1, -2]}, ["tokens.1"]),
    ("/detokenize", {"tokens": "abc"}, ["tokens"]),
    ("/tokenize", {"prompt": 5}, ["prompt"]),
    ("/tokenize", {}, ["prompt"]),
    ("/tokenize", {"messages": []}, ["messages"]),
    ("/tokenize", {"messages": MESSAGES, "chat_template": "{{ 'x' }}"}, ["chat_template"]),
    ("/tokenize", {"prompt": "hi", "model": "other"}, ["other"]),
])
def test_bad_tokenization_requests_are_4xx_naming_the_field(client: httpx.Client, path: str,
                                                           body: dict[str, Any], words: list[str]) -> None:
    response = client.post(path, json=body)
    assert 400 <= response.status_code < 500, response.text
    for word in words:
        assert word in response.json()["error"]["message"]


def test_tokenization_routes_need_a_key(fake: RunningFake) -> None:
    for path in ("/tokenize", "/detokenize"):
        assert httpx.post(f"{fake.url}{path}", json={"prompt": "hi", "tokens": [1]}).status_code == 401
    assert httpx.get(f"{fake.url}/tokenizer").status_code == 401


# ---- GET /tokenizer (issue 21: the gateway counts in-process with these very files) ------------------

def test_tokenizer_bundle_rebuilds_the_servers_tokenizer(client: httpx.Client, tokenizer: Any) -> None:
    from inference.tokenizer_bundle import HASH_HEADER, load_bundle

    response = client.get("/tokenizer")
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(bundle["files"])
    assert bundle["chat_template"] is None and bundle["max_model_len"] == 300
    # The hash is on every endpoint's answer (the gateway compares it with the copy it counts with).
    assert response.headers[HASH_HEADER] == bundle["hash"]
    for answer in (client.post("/tokenize", json={"prompt": "x"}), client.get("/v1/models"),
                   client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}),
                   client.post("/tokenize", json={"prompt": 1})):  # errors too
        assert answer.headers[HASH_HEADER] == bundle["hash"], answer.text
    copy, digest, template, max_len = load_bundle(bundle)
    assert (digest, template, max_len) == (bundle["hash"], None, 300)
    text = "The platform serves 1024 tokens: déjà vu \u2014 😀\n\t<s><|user|>  x"
    assert copy.encode(text) == tokenizer.encode(text)
    assert copy.apply_chat_template(MESSAGES, tokenize=False) == tokenizer.apply_chat_template(MESSAGES, tokenize=False)


def test_a_tampered_bundle_is_refused(client: httpx.Client) -> None:
    import base64

    from inference.tokenizer_bundle import load_bundle

    bundle = client.get("/tokenizer").json()
    for broken in ({**bundle, "max_model_len": 301}, {**bundle, "chat_template": "{{ 'x' }}"},
                   {**bundle, "files": {**bundle["files"], "tokenizer_config.json": base64.b64encode(b"{}").decode()}},
                   {**bundle, "files": {"../tokenizer.json": bundle["files"]["tokenizer.json"]}}, [], {}):
        with pytest.raises(ValueError):
            load_bundle(broken)


# ---- --chat-template ------------------------------------------------------------------------------

OVERRIDE = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")


def test_chat_template_override_renders_chat_and_tokenize(tokenizer: Any) -> None:
    from inference.server import create_app

    engine = FakeEngine(tokenizer)
    app = create_app(engine, tokenizer, api_keys=None, chat_template=load_chat_template(OVERRIDE))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        tokens = client.post("/tokenize", json={"messages": MESSAGES}).json()["tokens"]
        assert client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1}).status_code == 200
    assert tokenizer.decode(tokens) == "[system]Be brief.[user]The platform[assistant]"
    assert engine.requests[-1].prompt_token_ids == tokens


def test_the_tokenizer_bundle_carries_the_override_template(tokenizer: Any) -> None:
    from inference.server import create_app
    from inference.tokenizer_bundle import HASH_HEADER

    plain = create_app(FakeEngine(tokenizer), tokenizer, api_keys=None).state.server.tokenizer_hash
    app = create_app(FakeEngine(tokenizer), tokenizer, api_keys=None, chat_template=load_chat_template(OVERRIDE))
    with serve_in_thread(app) as url:
        response = httpx.get(f"{url}/tokenizer")
    assert response.json()["chat_template"] == OVERRIDE
    assert response.headers[HASH_HEADER] == response.json()["hash"] != plain


def test_load_chat_template_reads_a_file_or_takes_inline_text(tmp_path: Path) -> None:
    path = tmp_path / "template.jinja"
    path.write_text(OVERRIDE)
    assert load_chat_template(str(path)) == OVERRIDE
    assert load_chat_template(OVERRIDE) == OVERRIDE
    with pytest.raises(ValueError, match="neither an existing file nor an inline Jinja"):
        load_chat_template(str(tmp_path / "missing.jinja"))
    with pytest.raises(ValueError, match="not a valid Jinja template"):
        load_chat_template("{% for m in messages %}unclosed")


@pytest.mark.parametrize(("value", "message"), [("/nonexistent/template.jinja", "neither an existing file"),
                                                ("{% if %}", "not a valid Jinja template")])
def test_bad_chat_template_flag_exits_2_before_loading_the_model(tiny_model_dir: Path, value: str,
                                                                 message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inference", "serve", "--model-dir", str(tiny_model_dir), "--allow-unauthenticated",
         "--chat-template", value], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# ---- EOS ids from generation_config.json ----------------------------------------------------------------


def test_eos_ids_are_the_union_of_config_and_generation_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig

    from inference.model_runner import model_eos_token_ids

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = AutoConfig.from_pretrained(model)
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, config.eos_token_id, 9]}))
    assert model_eos_token_ids(model, config) == tuple(sorted({config.eos_token_id, 7, 9}))
    (model / "generation_config.json").unlink()
    assert model_eos_token_ids(model, config) == (config.eos_token_id,)


@pytest.mark.timeout(180)
def test_engine_stops_at_an_end_of_turn_id_listed_only_in_generation_config(tiny_model_dir: Path,
                                                                             tmp_path: Path) -> None:
    from inference.engine_api import GenerationRequest, SamplingParams
    from inference.engine_config import EngineConfig
    from inference.ranks import start_engine

    def run(model_dir: Path, prompt: list[int]) -> list[tuple[int | None, str | None]]:
        engine = start_engine(EngineConfig(model_dir=model_dir, dtype="float32", max_batch_size=2,
                                           max_model_len=64, max_num_batched_tokens=32, num_threads=1), environ={})
        assert engine is not None

        async def go() -> list[tuple[int | None, str | None]]:
            params = SamplingParams(max_tokens=8, temperature=0.0)
            out = [(e.token_id, e.finish_reason)
                   async for e in engine.generate(GenerationRequest("r", prompt, params))]
            await engine.shutdown()
            return out

        return asyncio.run(go())

    prompt = [1, 40, 41, 42]
    free = run(tiny_model_dir, prompt)
    free_tokens = [t for t, _ in free]
    assert len(free_tokens) == 8, "the tiny model must not hit its own EOS in this probe"
    end_of_turn = free_tokens[2]
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    generation_config = json.loads((model / "generation_config.json").read_text())
    generation_config["eos_token_id"] = [generation_config["eos_token_id"], end_of_turn]
    (model / "generation_config.json").write_text(json.dumps(generation_config))

    stopped = run(model, prompt)
    cut = free_tokens.index(end_of_turn) + 1
    assert [t for t, _ in stopped] == free_tokens[:cut]
    assert stopped[-1][1] == "stop"
