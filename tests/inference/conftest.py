"""Shared fixtures for the inference tests: a tiny seeded model directory built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.model_factory import write_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `tiny` preset model + tokenizer (seed 0) that loads with AutoModelForCausalLM/AutoTokenizer."""
    return write_model(tmp_path_factory.mktemp("tiny_model"), "tiny", seed=0)
