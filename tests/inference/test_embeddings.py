"""Issue 12 item 5: `POST /v1/embeddings` with the official `openai` client: string, list and
token-id inputs, float and base64 encodings, `dimensions` only for a declared Matryoshka model,
bounded requests (400/413 naming the field), values equal to transformers' own pooled hidden
states; the `--embeddings served` CLI path end to end."""

from __future__ import annotations

import argparse
import base64
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import torch
from transformers import AutoModel

from inference import serve
from inference.embeddings import EmbeddingConfig, EmbeddingService
from inference.server import create_app
from tests.inference.fakes import FakeEngine, free_port, load_tokenizer, serve_in_thread
from tests.inference.test_api import start_server, stop_server, wait_ready

TEXTS = ["The platform serves language models.", "Tensor parallelism splits attention heads",
         "Numbers: 0 1 2 3"]


@contextlib.contextmanager
def embedding_server(model_dir: Path, **cfg: Any) -> Iterator[tuple[str, EmbeddingService]]:
    """The real app with a FakeEngine for generation and a real EmbeddingService, in a thread."""
    tokenizer = load_tokenizer(model_dir)
    service = EmbeddingService.load(EmbeddingConfig(model_dir=model_dir, model_name="tiny-embed", **cfg),
                                    served_names=("fake-model",))
    app = create_app(FakeEngine(tokenizer), tokenizer, api_keys=None, embedding_service=service)
    with serve_in_thread(app) as url:
        yield url, service
    service.shutdown()


@pytest.fixture(scope="module")
def mean_server(tiny_model_dir: Path) -> Iterator[str]:
    with embedding_server(tiny_model_dir) as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(mean_server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mean_server}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):  # noqa: ANN201
    """transformers' base model: mean (or last-token) pooled, L2-normalised, one text at a time."""
    model = AutoModel.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(tiny_model_dir)

    def embed(text: str, pooling: str = "mean") -> np.ndarray:
        ids = torch.tensor([tokenizer.encode(text)])
        with torch.inference_mode():
            hidden = model(input_ids=ids).last_hidden_state[0]
        pooled = hidden.mean(dim=0) if pooling == "mean" else hidden[-1]
        return torch.nn.functional.normalize(pooled, dim=0).numpy()

    return embed


def test_float_embeddings_equal_transformers_mean_pooling(client: openai.OpenAI, reference: Any) -> None:
    reply = client.embeddings.create(model="tiny-embed", input=TEXTS, encoding_format="float")
    assert [item.index for item in reply.data] == [0, 1, 2]
    for text, item in zip(TEXTS, reply.data, strict=True):
        vector = np.array(item.embedding)
        assert vector.shape == (64,)
        assert abs(np.linalg.norm(vector) - 1) < 1e-5
        # Batched with right padding and an attention mask = one at a time.
        assert np.allclose(vector, reference(text), atol=1e-5)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 0


def test_base64_embeddings_decode_to_the_float_values(client: openai.OpenAI, mean_server: str) -> None:
    floats = client.embeddings.create(model="tiny-embed", input="hello world", encoding_format="float")
    # The openai client asks for base64 by default and decodes it itself.
    default = client.embeddings.create(model="tiny-embed", input="hello world")
    assert np.allclose(default.data[0].embedding, floats.data[0].embedding, atol=0)
    raw = httpx.post(f"{mean_server}/v1/embeddings", json={"input": "hello world", "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, np.array(floats.data[0].embedding, dtype=np.float32))


def test_token_id_inputs_embed_like_their_text(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    ids = [tokenizer.encode(text) for text in TEXTS[:2]]
    by_text = client.embeddings.create(model="tiny-embed", input=TEXTS[:2], encoding_format="float")
    one = client.embeddings.create(model="tiny-embed", input=ids[0], encoding_format="float")
    many = client.embeddings.create(model="fake-model", input=ids, encoding_format="float")
    assert np.allclose(one.data[0].embedding, by_text.data[0].embedding, atol=1e-6)
    for a, b in zip(many.data, by_text.data, strict=True):
        assert np.allclose(a.embedding, b.embedding, atol=1e-6)


@pytest.mark.parametrize(("body", "status", "expected"), [
    ({"input": "x", "dimensions": 16}, 400, ["dimensions", "Matryoshka"]),
    ({"input": "x", "dimensions": 65}, 400, ["dimensions", "64"]),
    ({"input": "x", "dimensions": 0}, 400, ["dimensions"]),
    ({"input": []}, 400, ["input"]),
    ({"input": ["a", ""]}, 400, ["input.1", "empty"]),
    ({"input": ["a"] * 2049}, 400, ["input", "2048"]),
    ({"input": ["a", "word " * 2000]}, 400, ["input.1", "at most 1024"]),
    ({"input": [1, 2, 512]}, 400, ["input", "512"]),
    ({"input": [[5] * 1000] * 301}, 413, ["input", "300000"]),
    ({"input": "x", "encoding_format": "int8"}, 400, ["encoding_format"]),
    ({"input": 3}, 400, ["input"]),
    ({"input": "x", "model": "other"}, 404, ["other"]),
])
def test_bad_embedding_requests_name_the_field(mean_server: str, body: dict[str, Any], status: int,
                                               expected: list[str]) -> None:
    response = httpx.post(f"{mean_server}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    for word in expected:
        assert word in message


def test_matryoshka_dimensions_truncate_and_renormalise(tiny_model_dir: Path, reference: Any) -> None:
    with embedding_server(tiny_model_dir, pooling="last", matryoshka=True) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        full = client.embeddings.create(model="tiny-embed", input=TEXTS[0], encoding_format="float")
        short = client.embeddings.create(model="tiny-embed", input=TEXTS[0], dimensions=16)
    assert np.allclose(full.data[0].embedding, reference(TEXTS[0], "last"), atol=1e-5)
    head = np.array(full.data[0].embedding[:16])
    assert len(short.data[0].embedding) == 16
    assert np.allclose(short.data[0].embedding, head / np.linalg.norm(head), atol=1e-6)


def test_embeddings_are_a_400_when_not_enabled(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    with serve_in_thread(create_app(FakeEngine(tokenizer), tokenizer, api_keys=None)) as url:
        response = httpx.post(f"{url}/v1/embeddings", json={"input": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "embeddings_not_enabled"


def test_embedding_flags_are_checked(tiny_model_dir: Path) -> None:
    def parse(*extra: str) -> argparse.Namespace:
        return serve.build_parser().parse_args(["serve", "--model-dir", str(tiny_model_dir),
                                                "--allow-unauthenticated", *extra])

    for extra, message in ((("--embeddings", "served", "--tp-size", "2"), "--tp-size 1"),
                           (("--embeddings", "served", "--embeddings-model-dir", str(tiny_model_dir)), "not both"),
                           (("--embeddings-model-dir", "/nonexistent"), "config.json")):
        with pytest.raises(serve.UsageError, match=message):
            serve.validate_serve_args(parse(*extra))
    serve.validate_serve_args(parse("--embeddings", "served"))


@pytest.mark.slow
def test_served_model_embeddings_through_the_cli(tiny_model_dir: Path, tmp_path: Path, reference: Any) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(tiny_model_dir, port, "--allow-unauthenticated", "--embeddings", "served",
                        log_path=tmp_path / "server.log")
    try:
        wait_ready(proc, url)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        model = client.models.list().data[0].id
        reply = client.embeddings.create(model=model, input=TEXTS, encoding_format="float")
        for text, item in zip(TEXTS, reply.data, strict=True):
            # `--embeddings served` pools a decoder's states: the last token's by default (inference/defaults.py).
            assert np.allclose(item.embedding, reference(text, "last"), atol=1e-5)
        # Generation still works next to it.
        assert client.completions.create(model=model, prompt="The platform", max_tokens=4).choices[0].text
    finally:
        assert stop_server(proc) == 0

