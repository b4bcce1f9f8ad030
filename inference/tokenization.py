"""Prompt tokenization for the HTTP layer: off the event loop, bounded in size and concurrency.

Tokenizing is CPU work proportional to the prompt: an 8 MiB prompt took 13-35 s on the event loop
and froze every stream and `/health` meanwhile. Two bounds keep that from happening:

* **Size**: a token covers at most `longest_token_chars` characters of the text, so a prompt longer
  than `max_model_len * longest_token_chars` characters cannot fit the context whatever it says. It is
  refused (400 `context_length_exceeded`) before any tokenization, in O(1). With a normalizer in the
  tokenizer (which can compose several code points into one) the bound is widened by
  `NORMALIZER_SLACK`; text that a normalizer deletes outright (e.g. combining marks under
  strip-accents) still counts, so such prompts are refused even if they would have fit.
* **Where and how many**: tokenization and the chat template run in a dedicated thread pool of
  `max_workers` threads; requests beyond that queue for a worker. The event loop only awaits.
  Measured with `tokenizers` 0.23: `PreTrainedTokenizerFast.encode` goes through the Rust
  `encode_batch`, which releases the GIL while it works (an event-loop tick waited at most ~0.46 s
  during an 8 MiB encode in a worker thread, against the whole 2.5-12 s with the GIL-holding
  `Tokenizer.encode`); the conversion of the ids to a Python list holds it, briefly.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import errors, json_body

T = TypeVar("T")

# Unicode normalization (NFC/NFKC) composes a base character and its combining marks into one
# code point; 4 covers a base with three composable marks (e.g. Hangul L+V+T is 3 -> 1).
NORMALIZER_SLACK = 4


def longest_token_chars(tokenizer: Any) -> int:
    """Characters of the longest vocabulary entry (added and special tokens included).

    Byte-level vocabularies spell each byte as one character, so this bounds the characters of the
    original text a token can cover from above (a character is at least one byte).
    """
    return max((len(token) for token in tokenizer.get_vocab()), default=1) or 1


class PromptTokenizer:
    """Turns prompts (text, chat messages, token ids) into checked token ids, off the event loop."""

    def __init__(self, tokenizer: Any, max_model_len: int, max_workers: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = len(tokenizer)
        has_normalizer = getattr(tokenizer.backend_tokenizer, "normalizer", None) is not None
        slack = NORMALIZER_SLACK if has_normalizer else 1
        self.max_prompt_chars = max_model_len * longest_token_chars(tokenizer) * slack
        # Two workers by default: a long prompt does not hold up every short one behind it, and
        # tokenization cannot take more than two cores from the engine.
        workers = max_workers or min(2, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inferforge-tokenize")

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _check_chars(self, chars: int, what: str) -> None:
        if chars > self.max_prompt_chars:
            raise errors.bad_request(
                f"This model's maximum context length is {self.max_model_len} tokens, which holds at "
                f"most {self.max_prompt_chars} characters of {what}; the request has {chars}. "
                "Shorten it.",
                code="context_length_exceeded",
            )

    async def encode_text(self, text: str) -> list[int]:
        """Token ids of a completion prompt (with the tokenizer's special tokens, e.g. BOS)."""
        self._check_chars(len(text), "prompt")
        return await self._off_loop(self.tokenizer.encode, text)

    async def encode_chat(self, content_chars: int, render: Callable[[], list[int]]) -> list[int]:
        """Token ids of a conversation: `render` (chat template + encode) runs in the pool.

        `content_chars` is the length of what the template wraps (message contents, tool schemas); the
        template only adds text around it, so it bounds the rendered prompt from below.
        """
        self._check_chars(content_chars, "message content")
        return await self._off_loop(render)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Other tokenizer work of the HTTP layer (`/tokenize`, `/detokenize`) in the same bounded pool."""
        return await self._off_loop(fn, *args)

    def check_token_ids(self, prompt_ids: Sequence[int]) -> None:
        """Token-id prompts: every id in the vocabulary (call after the length check: O(length))."""
        vocab = self.vocab_size
        bad = next((t for t in prompt_ids if t >= vocab), None)
        if bad is not None:
            raise errors.bad_request(
                f"prompt token id {json_body.quote(bad)} is out of range; token ids must be in [0, {vocab})",
                code="invalid_prompt",
            )

    def close(self) -> None:
        """Stop the worker threads (queued work is dropped, running work finishes)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
