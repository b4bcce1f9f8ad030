"""Counting prompts in the gateway's own process, exactly as the model server's /tokenize counts them.

The model server serves its tokenizer as files (`GET /tokenizer`, inference.tokenizer_bundle): the
files `save_pretrained` writes for the tokenizer object it encodes with, its `--chat-template`
override and its context length, under one SHA-256. The gateway rebuilds that tokenizer and counts
with the server's own code: the request is validated by the server's request model
(`TokenizeChatRequest`) and rendered by `inference.chat_template.render_prompt_ids`, the function
both /tokenize and /v1/chat/completions use; a completion prompt is encoded as /tokenize encodes it.
That saves the /tokenize round trip (~1.5-1.8 ms here) on every counted request.

Never a guess: whatever this path cannot count with certainty returns None and the caller asks
/tokenize (the server's answer, 400s included, as before): no tokenizer loaded yet, or the server
reported another tokenizer hash (or none) since it was loaded; a request the server's model refuses
or the template cannot render (the server's own message then comes from /tokenize); a body over
LOCAL_MAX_BODY_BYTES (tokenizing it could hold the event loop for milliseconds; it goes to the
server's worker threads instead); any unexpected failure.
"""

from __future__ import annotations

import logging
import os
from importlib import import_module
from typing import Any

# One short text at a time on the event loop: the Rust thread pool would only add a cross-thread hand-off (and
# its wake-up) to every count: ~170 against ~140 us a count measured here with idle gaps between counts.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pydantic import ValidationError

# The server's modules (torch-free): `inference` in a checkout and the image, `inferforge.inference` installed.
_INFERENCE = "inferforge.inference" if (__package__ or "").startswith("inferforge.") else "inference"
chat_template = import_module(f"{_INFERENCE}.chat_template")
inference_errors = import_module(f"{_INFERENCE}.errors")
protocol = import_module(f"{_INFERENCE}.protocol")
tokenizer_bundle = import_module(f"{_INFERENCE}.tokenizer_bundle")

log = logging.getLogger("gateway.counting")

# Bodies up to this size are counted on the event loop (a 16 KiB prompt encodes in well under a millisecond);
# larger ones are counted by the model server's /tokenize, which tokenizes in worker threads.
LOCAL_MAX_BODY_BYTES = 16 * 1024
# The fields of a chat request that the gateway's /tokenize call sends (and so the count depends on).
CHAT_FIELDS = ("messages", "tools", "add_generation_prompt", "continue_final_message")


# Texts a loaded tokenizer encodes both ways before the direct path is trusted (an extra guard to the class check).
_PROBES = ("", " ", "The gateway adds", "  two  spaces\n\tand tabs", "déjà vu 😀 \u200b", "1024 tokens: {\"a\": [1]}")


def _direct_backend(tokenizer: Any) -> Any:
    """The Rust backend when `tokenizer.encode` is transformers' own fast-tokenizer path (no subclass override
    of encode, its strategy choice, truncation/padding set-up or _encode_plus); else None."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    cls = type(tokenizer)
    if not (isinstance(tokenizer, TokenizersBackend) and cls.encode is PreTrainedTokenizerBase.encode
            and cls._get_padding_truncation_strategies is PreTrainedTokenizerBase._get_padding_truncation_strategies
            and cls.set_truncation_and_padding is TokenizersBackend.set_truncation_and_padding
            and cls._encode_plus is TokenizersBackend._encode_plus):
        return None
    backend = tokenizer.backend_tokenizer
    for text in _PROBES:
        slow = tokenizer.encode(text, add_special_tokens=True)  # also leaves the backend in encode's state
        if backend.encode_batch([text], add_special_tokens=True, is_pretokenized=False)[0].ids != slow:
            log.warning("the tokenizer's direct encoding differs from transformers' encode; not used")
            return None
    return backend


class LocalCounter:
    """One upstream's tokenizer, chat template and context length, pinned by the bundle's hash."""

    def __init__(self, tokenizer: Any, bundle_hash: str, template: str | None, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.hash = bundle_hash
        self.template = template
        self.max_model_len = max_model_len
        self._failures_logged = 0
        self._backend = _direct_backend(tokenizer)

    @classmethod
    def from_bundle(cls, bundle: Any) -> LocalCounter:
        """Blocking (writes the files, loads the tokenizer): run it off the event loop. ValueError if malformed."""
        return cls(*tokenizer_bundle.load_bundle(bundle))

    def count(self, endpoint: str, body: dict[str, Any]) -> tuple[int, int, int] | None:
        """(prompt tokens, prompts, context length) as /tokenize would count them; None when not certain."""
        try:
            if endpoint == "chat":
                return self._count_chat(body), 1, self.max_model_len
            return self._count_completion(body)
        except (ValidationError, inference_errors.APIError):
            return None  # the server refuses it: /tokenize answers with the server's own message
        except Exception:
            if self._failures_logged < 10:
                self._failures_logged += 1
                log.warning("in-process count failed; counting through /tokenize", exc_info=True)
            return None

    def _count_chat(self, body: dict[str, Any]) -> int:
        # Exactly inference.tokenize_endpoints.tokenize_handler's chat branch, on the payload the gateway's
        # /tokenize call would send.
        req = protocol.TokenizeChatRequest.model_validate({k: body[k] for k in CHAT_FIELDS if k in body})
        ids = chat_template.render_prompt_ids(
            self.tokenizer, req.messages, override=self.template,
            tools=[tool.model_dump(exclude_none=True) for tool in req.tools] if req.tools else None,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            add_special_tokens=req.add_special_tokens,
        )
        return len(ids)

    def _encoded_length(self, text: str) -> int:
        """len(tokenizer.encode(text, add_special_tokens=True)). transformers' encode of a fast tokenizer, without
        padding or truncation, is the Rust backend's `encode_batch([text], add_special_tokens=True)` once it has
        set the backend to no truncation, no padding and its `split_special_tokens`: called directly when the
        backend is in exactly that state (and the tokenizer's class runs transformers' own encode, see
        `_direct_backend`), it saves ~80 us of Python a count measured here; otherwise transformers' encode."""
        backend = self._backend
        if backend is not None and backend.truncation is None and backend.padding is None \
                and backend.encode_special_tokens == self.tokenizer.split_special_tokens:
            return len(backend.encode_batch([text], add_special_tokens=True, is_pretokenized=False)[0])
        return len(self.tokenizer.encode(text, add_special_tokens=True))

    def _count_completion(self, body: dict[str, Any]) -> tuple[int, int, int] | None:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompts: list[Any] = [prompt]
        elif isinstance(prompt, list) and prompt and all(type(p) is int for p in prompt):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt:
            prompts = prompt
        else:
            return None
        total = 0
        for p in prompts:
            if isinstance(p, str):
                # /tokenize's completion branch: `TokenizeCompletionRequest` adds special tokens by default.
                total += self._encoded_length(p)
            elif isinstance(p, list) and all(type(t) is int for t in p):
                total += len(p)
            else:
                return None
        return total, len(prompts), self.max_model_len
