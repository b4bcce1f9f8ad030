"""Token log-probabilities in the OpenAI response shapes (chat and legacy completions).

The engine reports, per generated token, its log-probability and the top-k alternatives as token
ids (`TokenEvent.logprob`, `TokenEvent.top_logprobs`); this module turns them into what clients
parse, as vLLM does: each token as its own decoded text (`tokenizer.decode([id])`, special tokens
kept), its UTF-8 bytes in chat responses.

Chat::

    "logprobs": {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}

Completions (legacy; `top_logprobs` also holds the sampled token, so up to k + 1 entries)::

    "logprobs": {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}], "text_offset": [...]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# OpenAI allows up to 20 top alternatives in chat (and 5 in legacy completions; vLLM allows 20).
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token with its log-probability and the top alternatives (ids)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


class LogprobFormatter:
    """Formats a choice's token log-probabilities; one per choice (it tracks the text offset)."""

    def __init__(self, backend_tokenizer: Any, *, text_offset: int = 0) -> None:
        self._backend = backend_tokenizer
        self._offset = text_offset

    def token_text(self, token_id: int) -> str:
        return self._backend.decode([token_id], skip_special_tokens=False)

    def _chat_entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def chat(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        """`choices[].logprobs` of a chat response or chunk."""
        return {"content": [
            {**self._chat_entry(e.token_id, e.logprob),
             "top_logprobs": [self._chat_entry(t, lp) for t, lp in e.top]}
            for e in entries
        ]}

    def completion_prompt(self, prompt_ids: list[int], entries: tuple[Any, ...] | None, k: int | None
                          ) -> dict[str, Any]:
        """The echoed prompt's part of a completion's `logprobs` (vLLM's shape): its tokens, null for the first
        token's logprob and alternatives, then each token's logprob given those before it, with `k` alternatives
        (the sampled-token rule: the token itself is always among them). Text offsets start at 0."""
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        for position, token_id in enumerate(prompt_ids):
            text = self.token_text(token_id)
            tokens.append(text)
            offsets.append(self._offset)
            self._offset += len(text)
            if position == 0 or entries is None:
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            entry = entries[position - 1]
            token_logprobs.append(entry.logprob)
            top = {self.token_text(t): lp for t, lp in entry.top[:k or 0]}
            top.setdefault(text, entry.logprob)
            top_logprobs.append(top)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                "text_offset": offsets}

    def prompt_logprobs(self, prompt_ids: list[int], entries: tuple[Any, ...], k: int) -> list[Any]:
        """vLLM's `prompt_logprobs`: null for the first token, then {token id: {"logprob", "rank",
        "decoded_token"}} with the prompt token and its `k` most likely alternatives (ranks 1..k)."""
        out: list[Any] = [None]
        for token_id, entry in zip(prompt_ids[1:], entries, strict=True):
            position: dict[str, dict[str, Any]] = {
                str(token_id): {"logprob": entry.logprob, "rank": entry.rank,
                                "decoded_token": self.token_text(token_id)}}
            for rank, (alt, logprob) in enumerate(entry.top[:k], start=1):
                position.setdefault(str(alt), {"logprob": logprob, "rank": rank,
                                               "decoded_token": self.token_text(alt)})
            out.append(position)
        return out

    def completion(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        """`choices[].logprobs` of a completion response or chunk (text offsets continue across calls)."""
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        for e in entries:
            text = self.token_text(e.token_id)
            tokens.append(text)
            token_logprobs.append(e.logprob)
            top = {self.token_text(t): lp for t, lp in e.top}
            top.setdefault(text, e.logprob)
            top_logprobs.append(top)
            offsets.append(self._offset)
            self._offset += len(text)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                "text_offset": offsets}
