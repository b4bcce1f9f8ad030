"""Shared fixtures for the inference tests: a tiny seeded model directory built once per session, and
an OpenAI client and a script setter over the `fake` server fixture a test module defines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from inference.model_factory import write_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `tiny` preset model + tokenizer (seed 0) that loads with AutoModelForCausalLM/AutoTokenizer."""
    return write_model(tmp_path_factory.mktemp("tiny_model"), "tiny", seed=0)


@pytest.fixture()
def oai(fake: Any) -> openai.OpenAI:
    """An OpenAI client for the module's `fake` server (tests/inference/fakes.py RunningFake)."""
    return openai.OpenAI(base_url=f"{fake.url}/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture()
def model_writes(fake: Any, tokenizer: Any) -> Iterator[Any]:
    """Set what the module's scripted model writes (then EOS) for the duration of one test."""
    original = fake.engine.script

    def set_output(text: str) -> None:
        fake.engine.script = tokenizer.encode(text, add_special_tokens=False)

    yield set_output
    fake.engine.script = original
