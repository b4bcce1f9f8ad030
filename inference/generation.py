"""One request's token stream, from the engine's token events to text deltas: what a response is made of.

`Generation` owns a choice's engine stream, its incremental detokenization (the `tokenizers` DecodeStream, O(1)
per token), stop strings (it cuts the text and calls `engine.abort`), logprobs, usage, metrics and its one log
line. The helpers around it run several choices together and give up on a client that left. Logs carry ids,
token counts and timings, never prompt or output text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from tokenizers.decoders import DecodeStream

from . import tool_calls
from .engine_api import AsyncEngine, GenerationRequest, SamplingParams, TokenEvent
from .logprobs import TokenLogprob
from .metrics import RequestTimer, ServerMetrics
from .protocol import UsageInfo
from .tokenization import PromptTokenizer

log = logging.getLogger("inference.server")

# Prompt tokens fed to the stream decoder before the output, so the first output token decodes with
# the spacing it has in context (SentencePiece-style decoders strip a leading space otherwise).
DECODE_CONTEXT_TOKENS = 4


class ClientGone(Exception):
    """The client disconnected before the response was complete."""


@dataclass
class ServerState:
    """What the lifecycle (serve.py) and the routes share."""

    engine: AsyncEngine
    tokenizer: Any
    model_name: str
    metrics: ServerMetrics
    prompts: PromptTokenizer
    draining: bool = False
    created: int = 0
    # Request ids of generations between admission and their response's end (the drain waits on it).
    in_flight: set[str] = field(default_factory=set)
    # --chat-template: replaces the tokenizer's own template when set.
    chat_template: str | None = None
    # Compiles response_format / tool_choice grammars (structured_output.GrammarCompiler).
    grammars: Any = None
    # --tool-call-parser: the call syntax replies are parsed for (and tool_choice grammars write).
    tool_format: tool_calls.ToolCallFormat = field(default_factory=tool_calls.HermesFormat)
    # Special-token ids of the format's markers and their text, put back into decoded text of
    # replies whose calls are parsed (decoding skips special tokens).
    tool_markers: dict[int, str] = field(default_factory=dict)
    # /v1/embeddings (embeddings.EmbeddingService); None when the server serves none.
    embeddings: Any = None
    # GET /tokenizer's body (tokenizer_bundle) and its hash, sent on every endpoint's response so the
    # gateway knows whether its in-process copy of the tokenizer is this one; None if it could not be made.
    tokenizer_bundle: bytes | None = None
    tokenizer_hash: str | None = None

    def abort_all(self) -> None:
        """Abort every in-flight generation (drain timeout): their responses end with "abort"."""
        for request_id in list(self.in_flight):
            self.engine.abort(request_id)

    @property
    def ready(self) -> bool:
        """Ready for traffic: the engine is up on every rank and we are not shutting down."""
        return self.engine.is_ready and not self.engine.is_dead and not self.draining


class StopStringMatcher:
    """Accumulates output text, cuts it at the first stop string, and holds back a possible prefix.

    While streaming, the last `len(longest stop) - 1` characters are held back: they could be the
    start of a stop string completed by the next token, and text already sent cannot be unsent.
    """

    __slots__ = ("text", "sent", "_stops", "_hold")

    def __init__(self, stops: list[str] | None) -> None:
        self.text = ""
        self.sent = 0
        self._stops = stops or []
        self._hold = max((len(s) for s in self._stops), default=1) - 1

    def add(self, piece: str) -> bool:
        """Append decoded text; True (and the text cut before the stop string) if a stop matched."""
        # A stop string can only start within the held-back tail or the new piece.
        search_from = max(0, len(self.text) - self._hold)
        self.text += piece
        cut = -1
        for stop in self._stops:
            at = self.text.find(stop, search_from)
            if at != -1 and (cut == -1 or at < cut):
                cut = at
        if cut != -1:
            self.text = self.text[:cut]
            return True
        return False

    def take(self, final: bool) -> str:
        """The text not yet sent; everything when `final`, else all but the held-back tail."""
        end = len(self.text) if final else max(self.sent, len(self.text) - self._hold)
        out = self.text[self.sent:end]
        self.sent = end
        return out


class Generation:
    """One request's token stream from the engine, turned into text deltas with stop handling."""

    def __init__(
        self,
        state: ServerState,
        request_id: str,
        endpoint: str,
        prompt_ids: list[int],
        params: SamplingParams,
        stops: list[str] | None,
        index: int = 0,
        counts_prompt: bool = True,
        markers: dict[int, str] | None = None,
    ) -> None:
        self.state = state
        self.request_id = request_id
        self.endpoint = endpoint
        self.index = index  # the choice's index in the response
        # The first of a prompt's n choices counts its prompt tokens (usage, metrics); the others share it.
        self.counts_prompt = counts_prompt
        self.wants_logprobs = params.logprobs is not None
        # Log-probabilities of tokens whose text has not been handed out yet (see take_logprobs).
        self._logprobs: list[TokenLogprob] = []
        self.prompt_tokens = len(prompt_ids)
        self.prompt_ids = prompt_ids
        # The prompt tokens' logprobs (PromptLogprob each, after the first token) when params.prompt_logprobs.
        self.prompt_logprobs: tuple[Any, ...] | None = None
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.timer = RequestTimer(state.metrics)
        self._engine = state.engine
        self._backend = state.tokenizer.backend_tokenizer
        self._decoder = DecodeStream(ids=prompt_ids[-DECODE_CONTEXT_TOKENS:], skip_special_tokens=True)
        # Special tokens whose text the tool-call parser must see (ServerState.tool_markers).
        self._markers = markers or {}
        self._matcher = StopStringMatcher(stops)
        self._events = state.engine.generate(GenerationRequest(request_id, prompt_ids, params))
        self._first: TokenEvent | None = None
        self._closed = False
        state.in_flight.add(request_id)

    async def start(self) -> None:
        """Wait for admission and the first token, so overload errors become HTTP statuses."""
        try:
            self._first = await anext(self._events)
        except StopAsyncIteration:
            self._first = TokenEvent(None, "abort")

    def _consume(self, event: TokenEvent) -> bool:
        """Apply one event; True when the request is finished."""
        if event.prompt_logprobs is not None:
            self.prompt_logprobs = event.prompt_logprobs
        if event.token_id is not None:
            self.completion_tokens += 1
            self.timer.token()
            if self.wants_logprobs and event.logprob is not None:
                self._logprobs.append(TokenLogprob(event.token_id, event.logprob, event.top_logprobs))
            piece = self._decoder.step(self._backend, event.token_id)
            if event.token_id in self._markers:
                piece = (piece or "") + self._markers[event.token_id]
            if piece and self._matcher.add(piece):
                self.finish_reason = "stop"
                # Stop string matched: free the batch slot now rather than at max_tokens.
                self._engine.abort(self.request_id)
                return True
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
            return True
        return False

    async def deltas(self) -> AsyncIterator[str]:
        """Text deltas ready to send; after the last one, `finish_reason` is set."""
        assert self._first is not None, "start() must be awaited first"
        done = self._consume(self._first)
        while not done:
            out = self._matcher.take(final=False)
            # With logprobs every token is reported, also one whose text is held back or incomplete.
            if out or self._logprobs:
                yield out
            try:
                event = await anext(self._events)
            except StopAsyncIteration:
                # The engine ended the stream without a finish reason: treat as aborted.
                self.finish_reason = "abort"
                break
            done = self._consume(event)
        out = self._matcher.take(final=True)
        if out or self._logprobs:
            yield out

    def take_logprobs(self) -> list[TokenLogprob]:
        """Log-probabilities of the tokens generated since the last call (up to the last delta)."""
        taken, self._logprobs = self._logprobs, []
        return taken

    async def text(self) -> str:
        """The whole output text (non-streaming); its logprobs stay for `take_logprobs`."""
        pieces = []
        kept: list[TokenLogprob] = []
        async for delta in self.deltas():
            pieces.append(delta)
            kept.extend(self.take_logprobs())
        self._logprobs = kept
        return "".join(pieces)

    @property
    def usage(self) -> UsageInfo:
        return UsageInfo(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )

    async def close(self, status: int = 200, record: bool = True) -> None:
        """Release the engine stream (aborting it if unfinished), record metrics, log one line."""
        if self._closed:
            return
        self._closed = True
        self.state.in_flight.discard(self.request_id)
        if self.finish_reason is None:
            # Client gone or server error before the end: the engine must free the batch slot.
            self.finish_reason = "abort"
            self._engine.abort(self.request_id)
        e2e = self.timer.finish(record=record)
        if record:
            metrics = self.state.metrics
            metrics.prompt_tokens.inc(self.prompt_tokens if self.counts_prompt else 0)
            metrics.generation_tokens.inc(self.completion_tokens)
            metrics.request_finished(self.finish_reason)
        ttft = self.timer.ttft_s
        log.info(
            "request finished",
            extra={"fields": {
                "request_id": self.request_id,
                "endpoint": self.endpoint,
                "status": status,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "finish_reason": self.finish_reason,
                "ttft_s": None if ttft is None else round(ttft, 6),
                "e2e_s": round(e2e, 6),
            }},
        )
        # Last, because it awaits: in a stream cancelled by a client disconnect, an await can be
        # interrupted again, and the bookkeeping above must not be lost with it.
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            with suppress(Exception):
                await aclose()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Run `work`, cancelling it if the client disconnects first (then raise ClientGone)."""
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work_task.done():
            work_task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await work_task
            raise ClientGone()
    return work_task.result()


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


def usage_of(gens: list[Generation]) -> UsageInfo:
    """Usage of a whole request: each prompt once (its n choices share it), every choice's output."""
    prompt_tokens = sum(gen.prompt_tokens for gen in gens if gen.counts_prompt)
    completion_tokens = sum(gen.completion_tokens for gen in gens)
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens)


async def interleaved(gens: list[Generation]) -> AsyncIterator[tuple[Generation, str | None]]:
    """(choice, text delta) pairs of every choice as they come, then (choice, None) once that
    choice has finished (its finish_reason is set). One choice streams directly (the hot path)."""
    if len(gens) == 1:
        gen = gens[0]
        async for delta in gen.deltas():
            yield gen, delta
        yield gen, None
        return
    queue: asyncio.Queue[tuple[Generation, str | None] | BaseException] = asyncio.Queue()

    async def pump(gen: Generation) -> None:
        try:
            async for delta in gen.deltas():
                queue.put_nowait((gen, delta))
            queue.put_nowait((gen, None))
        except Exception as exc:  # handed to the consumer, which raises it in the response
            queue.put_nowait(exc)

    tasks = [asyncio.ensure_future(pump(gen)) for gen in gens]
    try:
        remaining = len(gens)
        while remaining:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item[1] is None:
                remaining -= 1
            yield item
    finally:
        for task in tasks:
            task.cancel()
