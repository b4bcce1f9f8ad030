"""The contract between the HTTP layer (server) and the generation engine (scheduler + model).

The HTTP layer depends only on this module; the engine implements `AsyncEngine`. Token ids in,
token ids out: tokenization, detokenization and stop strings are the HTTP layer's job (it calls
`abort` when a stop string matches), sampling and batching are the engine's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling; temperature 0 means greedy."""

    max_tokens: int
    """Tokens to generate; 0 runs the prefill only (echo, prompt logprobs: the HTTP layer allows it there)."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """Sample among the k most likely tokens only; 0 disables."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p x the most likely token's; 0 disables."""
    seed: int | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    """None: no log-probabilities. k >= 0: each token event carries the sampled token's
    log-probability and the k most likely alternatives (of the model's distribution, before
    temperature and top-p, as vLLM's default reports them)."""
    prompt_logprobs: int | None = None
    """None: none. k >= 0: the first event carries, for every prompt token after the first, its log-probability
    given the tokens before it, its rank in that distribution and the k most likely alternatives (vLLM's
    `prompt_logprobs`; lm-evaluation-harness scores loglikelihood tasks with them). Computed in the prefill that
    runs anyway: such a prompt reuses no cached prefix (its rows are computed)."""
    grammar: Any = None
    """A compiled grammar (`inference.structured_output.Grammar`) the generated tokens must follow,
    or None. The engine keeps one matcher per sequence on rank 0 and masks its logits before
    sampling; the sequence ends with finish_reason "stop" once the grammar is complete."""


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams


@dataclass(frozen=True, slots=True)
class PromptLogprob:
    """A prompt token's log-probability given the tokens before it."""

    logprob: float
    rank: int
    """1 + the number of tokens the model found more likely."""
    top: tuple[tuple[int, float], ...] = ()
    """(token id, log-probability) of the most likely tokens at that position, most likely first."""


@dataclass(frozen=True)
class TokenEvent:
    """One generated token; the last event of a request carries a finish_reason.

    `token_id` is None only on a terminal event that carries no token (e.g. abort).
    """

    token_id: int | None
    finish_reason: FinishReason | None = None
    logprob: float | None = None
    """log-probability of `token_id` when the request asked for logprobs."""
    top_logprobs: tuple[tuple[int, float], ...] = ()
    """(token id, log-probability) of the most likely tokens, most likely first (`params.logprobs` of them)."""
    prompt_logprobs: tuple[PromptLogprob, ...] | None = None
    """On a request's first event when `params.prompt_logprobs` is set: one entry per prompt token after the first."""


class QueueFullError(Exception):
    """Admission refused: the waiting queue is at capacity (HTTP 429 with Retry-After)."""

    def __init__(self, retry_after_s: float = 1.0) -> None:
        super().__init__(f"waiting queue is full; retry after {retry_after_s:g}s")
        self.retry_after_s = retry_after_s


class EngineDeadError(Exception):
    """A rank died or a collective timed out; the process must exit non-zero."""


class EngineShuttingDownError(Exception):
    """Admission is closed because the server is draining (HTTP 503)."""


class AsyncEngine(Protocol):
    """What rank 0's HTTP layer sees of the engine."""

    model_name: str
    max_model_len: int  # prompt tokens + max_tokens must fit in this

    @property
    def num_running(self) -> int: ...

    @property
    def num_waiting(self) -> int: ...

    @property
    def is_ready(self) -> bool:
        """True once the model is loaded on every rank and the engine loop is healthy."""

    @property
    def is_dead(self) -> bool:
        """True once a rank died or a collective timed out (EngineDeadError raised inside)."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream the request's tokens. Raises QueueFullError / EngineShuttingDownError on
        admission, EngineDeadError if the engine fails mid-request. Closing the iterator early
        (client disconnect) aborts the request and frees its batch slot."""

    def abort(self, request_id: str) -> None:
        """Stop a request now (stop string matched, client gone); frees its slot at the next step."""

    def stop_admission(self) -> None:
        """Refuse new requests from now on (SIGTERM); in-flight ones keep running."""

    def mark_dead(self, reason: str) -> None:
        """Declare the engine dead from outside (the supervisor saw a rank exit): every pending
        request fails with EngineDeadError at once, even while the step loop is stuck in a
        collective with the dead rank."""

    async def shutdown(self) -> None:
        """Stop the engine loop and release every rank (followers exit their loop)."""
