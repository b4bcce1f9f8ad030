"""The workload: seeded random prompts of an exact token length, and seeded arrival times."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt: token ids (exact length) or text, and its length in tokens."""

    prompt: list[int] | str
    prompt_len: int
    token_ids: list[int]
    """The ids either way, so offline baselines feed the model the very same tokens."""


def random_token_prompts(
    num_prompts: int,
    input_len: int,
    vocab_size: int,
    excluded_ids: Iterable[int] = (),
    seed: int = 0,
) -> list[list[int]]:
    """`num_prompts` lists of exactly `input_len` ids drawn uniformly from the vocabulary.

    Special tokens (BOS/EOS/PAD, ...) are excluded so a prompt never ends early or carries
    control tokens; the draw is seeded so every run and every baseline sees the same prompts.
    """
    if num_prompts < 1 or input_len < 1:
        raise ValueError(f"need at least one prompt of at least one token, got {num_prompts}x{input_len}")
    excluded = set(excluded_ids)
    allowed = np.array([i for i in range(vocab_size) if i not in excluded], dtype=np.int64)
    if allowed.size == 0:
        raise ValueError(f"no usable token ids: vocabulary of {vocab_size} is all special tokens")
    rng = np.random.default_rng(seed)
    draws = rng.choice(allowed, size=(num_prompts, input_len), replace=True)
    return [row.tolist() for row in draws]


def build_prompts(
    tokenizer: Any,
    num_prompts: int,
    input_len: int,
    seed: int,
    prompt_format: str = "ids",
    prefix_len: int = 0,
) -> list[Prompt]:
    """Prompts from a Hugging Face tokenizer: token ids sent as-is, or their decoded text.

    With `prefix_len`, every prompt starts with the same `prefix_len` random ids (a system prompt
    or RAG template, as vLLM's `--random-prefix-len`), then has `input_len` ids of its own.

    Token ids make the length exact on any server that accepts OpenAI's list-of-ints prompt.
    Text is decoded from the same ids and re-encoded; the length the server reports is checked
    later, since decode/encode does not always round-trip.
    """
    vocab_size = len(tokenizer)
    id_lists = random_token_prompts(num_prompts, input_len, vocab_size, tokenizer.all_special_ids, seed)
    if prefix_len:
        # Another seed than the prompts', so the prefix is not the first prompt's own tokens.
        prefix = random_token_prompts(1, prefix_len, vocab_size, tokenizer.all_special_ids, seed + 1_000_003)[0]
        id_lists = [prefix + ids for ids in id_lists]
    if prompt_format == "ids":
        return [Prompt(ids, prefix_len + input_len, ids) for ids in id_lists]
    if prompt_format == "text":
        prompts = []
        for ids in id_lists:
            text = tokenizer.decode(ids)
            reencoded = tokenizer(text, add_special_tokens=False)["input_ids"]
            prompts.append(Prompt(text, len(reencoded), list(reencoded)))
        return prompts
    raise ValueError(f"unknown prompt format {prompt_format!r}; allowed: 'ids', 'text'")


def arrival_offsets(num_requests: int, request_rate: float, seed: int, burstiness: float = 1.0) -> list[float]:
    """Seconds after the start at which each request is sent.

    Inter-arrival gaps follow a gamma distribution with shape `burstiness` and mean
    1 / `request_rate`, as in vLLM: burstiness 1 is a Poisson process (exponential gaps), lower is
    burstier, higher is more regular. An infinite rate sends everything at once.
    """
    if num_requests < 0:
        raise ValueError(f"number of requests must be >= 0, got {num_requests}")
    if not request_rate > 0:
        raise ValueError(f"request rate must be > 0 (or inf), got {request_rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=num_requests)
    if num_requests:
        gaps[0] = 0.0  # the first request goes out at once; each later one after its gap
    return np.cumsum(gaps).tolist()
