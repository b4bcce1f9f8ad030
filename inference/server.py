"""The OpenAI-compatible HTTP layer (Starlette ASGI app) over an `AsyncEngine`.

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health (process
alive), GET /ready (engine ready and not draining), GET /metrics (Prometheus).

The engine works in token ids; this layer owns tokenization and chat templates (run off the event
loop by `inference.tokenization`), incremental detokenization (the `tokenizers` DecodeStream, O(1) per
token), stop strings (it cuts the text and calls `engine.abort`), SSE framing, errors, metrics and
per-request logs. Logs carry ids, token counts and timings, never prompt or output text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from tokenizers.decoders import DecodeStream

from . import (
    chat_template,
    embeddings,
    errors,
    json_body,
    structured_output,
    tokenize_endpoints,
    tokenizer_bundle,
    tool_calls,
)
from .auth import APIKeyMiddleware, APIKeys
from .engine_api import (
    AsyncEngine,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from .logprobs import LogprobFormatter, TokenLogprob
from .metrics import CONTENT_TYPE, RequestTimer, ServerMetrics
from .protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatResponseMessage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    NamedToolChoice,
    UsageInfo,
    ignored_fields,
)
from .tokenization import PromptTokenizer

log = logging.getLogger("inference.server")

# Prompt tokens fed to the stream decoder before the output, so the first output token decodes with
# the spacing it has in context (SentencePiece-style decoders strip a leading space otherwise).
DECODE_CONTEXT_TOKENS = 4
# Largest accepted request body: a prompt at any realistic context length as JSON text or token ids
# fits many times over.
MAX_BODY_BYTES = 8 * 1024 * 1024
# Bodies up to this size are decoded on the event loop (well under a millisecond); larger ones in a
# worker thread.
PARSE_INLINE_MAX_BYTES = 64 * 1024
# The "request fields ignored" log line names at most this many fields.
MAX_LOGGED_FIELD_NAMES = 32


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


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
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


def _sse(payload: str) -> str:
    return f"data: {payload}\n\n"


def _named_tool(req: ChatCompletionRequest) -> str | None:
    return req.tool_choice.function.name if isinstance(req.tool_choice, NamedToolChoice) else None


def _chat_message(req: ChatCompletionRequest, text: str, finish_reason: str | None, fmt: tool_calls.ToolCallFormat
                  ) -> tuple[ChatResponseMessage, str | None]:
    """The assistant message of a whole output, with its tool calls parsed per `tool_choice`."""
    mode = req.tool_mode
    if mode == "named":
        call = fmt.parse_named(_named_tool(req) or "", text)
        return ChatResponseMessage(content=None, tool_calls=[call.to_openai()]), finish_reason
    if mode in ("auto", "required"):
        content, calls = fmt.parse(text)
        if calls:
            calls = calls if req.parallel_tool_calls else calls[:1]
            return (ChatResponseMessage(content=content, tool_calls=[c.to_openai() for c in calls]),
                    "tool_calls" if finish_reason != "abort" else finish_reason)
    return ChatResponseMessage(content=text), finish_reason


def _requested_logprobs(req: CompletionRequest | ChatCompletionRequest) -> int | None:
    """How many top alternatives the engine reports per token; None for no logprobs."""
    if isinstance(req, ChatCompletionRequest):
        return (req.top_logprobs or 0) if req.logprobs else None
    return req.logprobs


def _usage(gens: list[Generation]) -> UsageInfo:
    """Usage of a whole request: each prompt once (its n choices share it), every choice's output."""
    prompt_tokens = sum(gen.prompt_tokens for gen in gens if gen.counts_prompt)
    completion_tokens = sum(gen.completion_tokens for gen in gens)
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens)


async def _interleaved(gens: list[Generation]) -> AsyncIterator[tuple[Generation, str | None]]:
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


class OpenAIServer:
    """Route handlers bound to one `ServerState`."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    # ---- request parsing and validation -----------------------------------------------------------

    async def _parse(self, request: Request, model: type[Any]) -> Any:
        chunks: list[bytes] = []
        size = 0
        try:
            # Read with a bound: a request never needs more, and an unbounded body is a memory DoS.
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise errors.APIError(413, f"Request body exceeds {MAX_BODY_BYTES} bytes.",
                                          "invalid_request_error", "request_too_large")
                chunks.append(chunk)
        except ClientDisconnect as exc:
            raise ClientGone() from exc
        body = b"".join(chunks)
        if len(body) > PARSE_INLINE_MAX_BYTES:
            # Decoding and checking megabytes takes tens of milliseconds: keep it off the event loop.
            data = await asyncio.to_thread(json_body.decode_object, body)
        else:
            data = json_body.decode_object(body)
        try:
            parsed = model.model_validate(data)
        except ValidationError as exc:
            raise errors.from_validation_error(exc) from None
        self._note_ignored_fields(request, parsed)
        return parsed

    def _note_ignored_fields(self, request: Request, parsed: Any) -> None:
        """Count and log the unknown fields a request carried, by name only (values may be private)."""
        names = ignored_fields(parsed)
        if not names:
            return
        for name in names:
            self.state.metrics.field_ignored(name)
        shown = [name if len(name) <= 64 else name[:64] + "..." for name in names[:MAX_LOGGED_FIELD_NAMES]]
        log.info("request fields ignored", extra={"fields": {
            "path": request.url.path, "ignored_fields": shown, "ignored_count": len(names)}})

    def _check_admission(self, requested_model: str | None) -> None:
        state = self.state
        if requested_model is not None and requested_model != state.model_name:
            raise errors.model_not_found(requested_model, state.model_name)
        if state.engine.is_dead:
            raise errors.engine_dead()
        if state.draining:
            raise errors.draining()

    def _sampling(self, req: CompletionRequest | ChatCompletionRequest, prompt_len: int,
                  max_tokens: int | None) -> SamplingParams:
        max_len = self.state.engine.max_model_len
        if prompt_len == 0:
            raise errors.bad_request("prompt is empty; send at least one token", code="invalid_prompt")
        if prompt_len >= max_len:
            raise errors.bad_request(
                f"This model's maximum context length is {max_len} tokens, but the prompt has "
                f"{prompt_len} tokens; shorten the prompt so at least one token can be generated.",
                code="context_length_exceeded",
            )
        if max_tokens is None:
            max_tokens = max_len - prompt_len
        elif max_tokens < 1:
            raise errors.bad_request(f"max_tokens must be at least 1, got {json_body.quote(max_tokens)}",
                                     code="invalid_max_tokens")
        elif prompt_len + max_tokens > max_len:
            raise errors.bad_request(
                f"This model's maximum context length is {max_len} tokens, but {prompt_len} prompt "
                f"tokens + max_tokens {json_body.quote(max_tokens)} = {json_body.quote(prompt_len + max_tokens)}; "
                f"max_tokens can be at most {max_len - prompt_len} for this prompt.",
                code="context_length_exceeded",
            )
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=max(req.top_k, 0),  # vLLM's -1 means disabled, like 0
            min_p=req.min_p,
            seed=req.seed,
            ignore_eos=req.ignore_eos,
            logprobs=_requested_logprobs(req),
        )

    def _chat_prompt_ids(self, req: ChatCompletionRequest) -> list[int]:
        ids = chat_template.render_prompt_ids(
            self.state.tokenizer, req.messages, override=self.state.chat_template,
            tools=[tool.model_dump(exclude_none=True) for tool in req.tools] if req.tools else None,
            add_generation_prompt=req.add_generation_prompt, continue_final_message=req.continue_final_message,
        )
        named = _named_tool(req)
        if named is not None:
            # The call is opened for the model, which writes the arguments (grammar-constrained to
            # the function's parameters schema, see structured_output.request_grammar).
            ids = ids + self.state.tokenizer.encode(self.state.tool_format.named_call_prefix(named),
                                                   add_special_tokens=False)
        return ids

    # ---- endpoints ------------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        req: CompletionRequest = await self._parse(request, CompletionRequest)
        self._check_admission(req.model)
        tokens = self.state.prompts
        prompts: list[tuple[list[int], SamplingParams]] = []
        for prompt in req.prompts:
            if isinstance(prompt, str):
                prompt_ids = await tokens.encode_text(prompt)
                params = self._sampling(req, len(prompt_ids), req.max_tokens)
            else:
                prompt_ids = prompt
                # Length first: it bounds the id check's work.
                params = self._sampling(req, len(prompt_ids), req.max_tokens)
                tokens.check_token_ids(prompt_ids)
            prompts.append((prompt_ids, params))
        request_id = f"cmpl-{uuid.uuid4().hex}"
        gens = self._generations(request_id, "completions", prompts, req)
        await self._start(request, gens)
        created = int(time.time())
        model = self.state.model_name
        if req.stream:
            return self._stream(request_id, gens, self._completion_chunks(request_id, gens, req, created, model))
        texts = await self._whole_texts(request, gens)
        backend = self.state.tokenizer.backend_tokenizer
        body = CompletionResponse(
            id=request_id, created=created, model=model,
            choices=[CompletionChoice(
                index=gen.index, text=text, finish_reason=gen.finish_reason,
                logprobs=LogprobFormatter(backend).completion(gen.take_logprobs()) if gen.wants_logprobs else None,
            ) for gen, text in zip(gens, texts, strict=True)],
            usage=_usage(gens),
        )
        return Response(body.model_dump_json(), media_type="application/json",
                        headers={"X-Request-Id": request_id})

    async def chat_completions(self, request: Request) -> Response:
        req: ChatCompletionRequest = await self._parse(request, ChatCompletionRequest)
        self._check_admission(req.model)
        # The template only adds text around the contents and the tool schemas, so their sum bounds the prompt.
        chars = sum(len(m.text or "") for m in req.messages)
        chars += sum(len(tool.model_dump_json()) for tool in req.tools or ())
        prompt_ids = await self.state.prompts.encode_chat(chars, lambda: self._chat_prompt_ids(req))
        params = self._sampling(req, len(prompt_ids), req.requested_max_tokens)
        grammar = await self.state.grammars.for_request(req)
        if grammar is not None:
            params = dataclasses.replace(params, grammar=grammar)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        gens = self._generations(request_id, "chat.completions", [(prompt_ids, params)], req)
        await self._start(request, gens)
        created = int(time.time())
        model = self.state.model_name
        if req.stream:
            return self._stream(request_id, gens, self._chat_chunks(request_id, gens, req, created, model))
        texts = await self._whole_texts(request, gens)
        backend = self.state.tokenizer.backend_tokenizer
        choices = []
        for gen, text in zip(gens, texts, strict=True):
            message, finish_reason = _chat_message(req, text, gen.finish_reason, self.state.tool_format)
            choices.append(ChatChoice(
                index=gen.index, message=message, finish_reason=finish_reason,
                logprobs=LogprobFormatter(backend).chat(gen.take_logprobs()) if gen.wants_logprobs else None,
            ).model_dump())
        body = {
            "id": request_id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices,
            "usage": _usage(gens).model_dump(),
        }
        return JSONResponse(body, headers={"X-Request-Id": request_id})

    def _generations(self, request_id: str, endpoint: str, prompts: list[tuple[list[int], SamplingParams]],
                     req: CompletionRequest | ChatCompletionRequest) -> list[Generation]:
        """`n` choices per prompt, in order; each its own engine request (`<id>-<index>` when several)."""
        total = len(prompts) * req.n
        parses_calls = isinstance(req, ChatCompletionRequest) and req.tool_mode in ("auto", "required")
        markers = self.state.tool_markers if parses_calls else None
        gens = []
        for p, (prompt_ids, params) in enumerate(prompts):
            for i in range(req.n):
                index = p * req.n + i
                choice_params = params
                if params.seed is not None and i:
                    # Seeded choices differ from each other and are each reproducible.
                    choice_params = dataclasses.replace(params, seed=(params.seed + i + 2**63) % 2**64 - 2**63)
                gens.append(Generation(self.state, request_id if total == 1 else f"{request_id}-{index}",
                                       endpoint, prompt_ids, choice_params, req.stop, index=index,
                                       counts_prompt=i == 0, markers=markers))
        return gens

    async def _whole_texts(self, request: Request, gens: list[Generation]) -> list[str]:
        try:
            return await _unless_disconnected(request, asyncio.gather(*(gen.text() for gen in gens)))
        finally:
            for gen in gens:
                await gen.close()

    async def _start(self, request: Request, gens: list[Generation]) -> None:
        """Admission + first token of every choice, abandoned if the client leaves; an admission
        error closes every choice."""
        try:
            await _unless_disconnected(request, asyncio.gather(*(gen.start() for gen in gens)))
        except BaseException as exc:
            mapped = errors.from_engine_exception(exc)
            if mapped is None and isinstance(exc, ValueError):
                # The engine contract: ValueError at admission means the request cannot be served.
                mapped = errors.bad_request(str(exc), code="invalid_request")
            # A refused request never ran: log it, but keep it out of the finished-request metrics.
            for gen in gens:
                await gen.close(status=mapped.status if mapped else 499, record=mapped is None)
            if mapped is not None:
                raise mapped from None
            raise

    def _stream(self, request_id: str, gens: list[Generation], chunks: AsyncIterator[str]) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            try:
                async for chunk in chunks:
                    yield chunk
            except Exception as exc:  # headers are sent: report in-band, as vLLM does
                mapped = errors.from_engine_exception(exc)
                if mapped is None:
                    log.exception("stream failed", extra={"fields": {"request_id": request_id}})
                    mapped = errors.internal_error()
                yield _sse(json.dumps(mapped.to_body()))
                yield _sse("[DONE]")
            finally:
                # Also runs when the client disconnects (Starlette cancels this generator).
                for gen in gens:
                    await gen.close()

        return StreamingResponse(
            body(), media_type="text/event-stream",
            headers={"X-Request-Id": request_id, "Cache-Control": "no-cache"},
        )

    async def _completion_chunks(self, request_id: str, gens: list[Generation], req: CompletionRequest,
                                 created: int, model: str) -> AsyncIterator[str]:
        # Per-token hot path: a precomputed JSON frame around the json-encoded delta, instead of a
        # model per token. The frame is exactly what CompletionResponse serializes to.
        head = (f'data: {{"id":"{request_id}","object":"text_completion","created":{created},'
                f'"model":{json.dumps(model)},"choices":[{{"index":')
        tail = ',"finish_reason":null}],"usage":null}\n\n'
        continuous = req.continuous_usage
        formatters = {gen.index: LogprobFormatter(self.state.tokenizer.backend_tokenizer) for gen in gens}
        finished = 0
        async for gen, delta in _interleaved(gens):
            if delta is not None:
                logprobs = (json.dumps(formatters[gen.index].completion(gen.take_logprobs()))
                            if gen.wants_logprobs else "null")
                if continuous:
                    tail = f',"finish_reason":null}}],"usage":{_usage(gens).model_dump_json()}}}\n\n'
                yield f'{head}{gen.index},"text":{json.dumps(delta)},"logprobs":{logprobs}{tail}'
            else:
                # Without include_usage a finishing chunk carries the usage (an extension clients
                # ignore; the whole request's, on the last choice to finish); with it, OpenAI's
                # separate usage-only chunk does.
                finished += 1
                last = finished == len(gens)
                final = CompletionResponse(
                    id=request_id, created=created, model=model,
                    choices=[CompletionChoice(index=gen.index, text="", finish_reason=gen.finish_reason)],
                    usage=_usage(gens) if continuous or (last and not req.include_usage_chunk) else None,
                )
                yield _sse(final.model_dump_json())
        if req.include_usage_chunk:
            usage_chunk = CompletionResponse(id=request_id, created=created, model=model, choices=[],
                                             usage=_usage(gens))
            yield _sse(usage_chunk.model_dump_json())
        yield _sse("[DONE]")

    async def _chat_chunks(self, request_id: str, gens: list[Generation], req: ChatCompletionRequest,
                           created: int, model: str) -> AsyncIterator[str]:
        continuous = req.continuous_usage

        def chunk(index: int, delta: ChatDelta, finish: str | None = None, usage: UsageInfo | None = None,
                  choices: bool = True, logprobs: dict[str, Any] | None = None) -> str:
            return _sse(ChatCompletionChunk(
                id=request_id, created=created, model=model,
                choices=[ChatChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)]
                if choices else [],
                usage=usage if usage is not None or not continuous else _usage(gens),
            ).model_dump_json(exclude_none=False))

        for gen in gens:
            yield chunk(gen.index, ChatDelta(role="assistant", content=""))
        head = (f'data: {{"id":"{request_id}","object":"chat.completion.chunk","created":{created},'
                f'"model":{json.dumps(model)},"choices":[{{"index":')
        tail = ',"finish_reason":null}],"usage":null}\n\n'
        formatter = LogprobFormatter(self.state.tokenizer.backend_tokenizer)
        finished = 0
        mode = req.tool_mode
        parses_calls = mode in ("auto", "required")
        parsers = {gen.index: self.state.tool_format.stream() for gen in gens} if parses_calls else {}
        named_text = {gen.index: "" for gen in gens} if mode == "named" else {}
        async for gen, delta in _interleaved(gens):
            logprobs = formatter.chat(gen.take_logprobs()) if gen.wants_logprobs and delta is not None else None
            if mode == "none" and delta is not None:
                if continuous:
                    tail = f',"finish_reason":null}}],"usage":{_usage(gens).model_dump_json()}}}\n\n'
                yield (f'{head}{gen.index},"delta":{{"role":null,"content":{json.dumps(delta)}}},'
                       f'"logprobs":{json.dumps(logprobs)}{tail}')
                continue
            if mode == "named":
                # The whole call is sent once complete (its end is only known at the end).
                if delta is not None:
                    named_text[gen.index] += delta
                    if logprobs is not None:
                        yield chunk(gen.index, ChatDelta(content=""), logprobs=logprobs)
                    continue
                call = self.state.tool_format.parse_named(_named_tool(req) or "", named_text[gen.index])
                yield chunk(gen.index, ChatDelta(tool_calls=[call.to_openai(index=0)]))
            elif parses_calls:
                parser = parsers[gen.index]
                before = len(parser.calls)
                items = parser.feed(delta) if delta is not None else parser.finish()
                for item in items:
                    if isinstance(item, str):
                        yield chunk(gen.index, ChatDelta(content=item), logprobs=logprobs)
                    elif before == 0 or req.parallel_tool_calls:  # else: calls past the first are dropped
                        yield chunk(gen.index, ChatDelta(tool_calls=[item.to_openai(index=before)]),
                                    logprobs=logprobs)
                        before += 1
                    else:
                        continue
                    logprobs = None
                if logprobs is not None:
                    yield chunk(gen.index, ChatDelta(content=""), logprobs=logprobs)
                if delta is not None:
                    continue
            finished += 1
            last = finished == len(gens)
            finish_reason = gen.finish_reason
            if parses_calls and parsers[gen.index].calls and finish_reason != "abort":
                finish_reason = "tool_calls"
            yield chunk(gen.index, ChatDelta(), finish_reason,
                        _usage(gens) if last and not req.include_usage_chunk else None)
        if req.include_usage_chunk:
            yield chunk(0, ChatDelta(), usage=_usage(gens), choices=False)
        yield _sse("[DONE]")

    async def models(self, request: Request) -> Response:
        card = ModelCard(id=self.state.model_name, created=self.state.created,
                         max_model_len=self.state.engine.max_model_len)
        return Response(ModelList(data=[card]).model_dump_json(), media_type="application/json")

    async def health(self, request: Request) -> Response:
        # Liveness: the process answers; a dead engine fails it too, so a hung exit still restarts.
        if self.state.engine.is_dead:
            return JSONResponse({"status": "engine_dead"}, status_code=503)
        return JSONResponse({"status": "alive"})

    async def ready(self, request: Request) -> Response:
        state = self.state
        if state.ready:
            return JSONResponse({"status": "ready"})
        reason = ("engine_dead" if state.engine.is_dead else "draining" if state.draining
                  else "loading")
        return JSONResponse({"status": reason}, status_code=503)

    async def metrics(self, request: Request) -> Response:
        return Response(self.state.metrics.render(), media_type=CONTENT_TYPE)


Handler = Callable[[Request], Awaitable[Response]]


def _endpoint(state: ServerState, handler: Handler) -> Handler:
    """Every failure becomes one OpenAI-style error; unexpected ones are logged, never leaked."""

    async def wrapped(request: Request) -> Response:
        response = await answer(request)
        if state.tokenizer_hash is not None:
            response.headers[tokenizer_bundle.HASH_HEADER] = state.tokenizer_hash
        return response

    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except errors.APIError as exc:
            state.metrics.request_rejected(exc.code)
            # The code, never the message: messages may quote the request (e.g. a model name).
            log.info("request rejected", extra={"fields": {
                "path": request.url.path, "status": exc.status, "code": exc.code}})
            return exc.to_response()
        except ClientGone:
            # Nobody to answer; 499 is nginx's "client closed request", for the access log only.
            return Response(status_code=499)
        except Exception as exc:
            mapped = errors.from_engine_exception(exc)  # e.g. the engine died mid-request
            if mapped is None:
                log.exception("unhandled error", extra={"fields": {"path": request.url.path}})
                mapped = errors.internal_error()
            state.metrics.request_rejected(mapped.code)
            return mapped.to_response()

    return wrapped


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Router errors (404 unknown route, 405 wrong method) in the OpenAI error shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return errors.method_not_allowed(request.method, request.url.path).to_response()
    if exc.status_code == 404:
        return errors.not_found(request.url.path).to_response()
    return errors.APIError(exc.status_code, str(exc.detail), "invalid_request_error",
                           "http_error").to_response()


def create_app(
    engine: AsyncEngine,
    tokenizer: Any,
    *,
    api_keys: APIKeys | None,
    model_name: str | None = None,
    chat_template: str | None = None,
    embedding_service: Any = None,
    tool_call_parser: str = "hermes",
) -> Starlette:
    """The ASGI app. `api_keys=None` means unauthenticated (the CLI only allows that explicitly);
    `chat_template` (the text, see `chat_template.load_chat_template`) replaces the tokenizer's;
    `tool_call_parser` names the call syntax (`tool_calls.FORMATS`)."""
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise TypeError("the tokenizer must be a fast (Rust `tokenizers`) tokenizer")
    name = model_name or engine.model_name
    tool_format = tool_calls.get_format(tool_call_parser)
    state = ServerState(engine=engine, tokenizer=tokenizer, model_name=name,
                        metrics=ServerMetrics(engine, name), created=int(time.time()),
                        chat_template=chat_template, prompts=PromptTokenizer(tokenizer, engine.max_model_len),
                        grammars=structured_output.GrammarCompiler(tokenizer, getattr(engine, "vocab_size", None),
                                                                   tool_format=tool_format),
                        embeddings=embedding_service, tool_format=tool_format,
                        tool_markers=tool_calls.marker_token_ids(tokenizer, tool_format))
    try:
        bundle = tokenizer_bundle.make_bundle(tokenizer, chat_template, engine.max_model_len)
        state.tokenizer_bundle, state.tokenizer_hash = tokenizer_bundle.bundle_json(bundle), bundle["hash"]
    except Exception:  # the server serves without it; the gateway then counts through /tokenize
        log.warning("the tokenizer could not be written as files; GET /tokenizer is unavailable", exc_info=True)
    server = OpenAIServer(state)
    routes = [
        Route("/v1/completions", _endpoint(state, server.completions), methods=["POST"]),
        Route("/v1/chat/completions", _endpoint(state, server.chat_completions), methods=["POST"]),
        Route("/v1/models", _endpoint(state, server.models), methods=["GET"]),
        Route("/v1/embeddings", _endpoint(state, embeddings.embeddings_handler(server)), methods=["POST"]),
        # vLLM's paths (no /v1 prefix).
        Route("/tokenize", _endpoint(state, tokenize_endpoints.tokenize_handler(server)), methods=["POST"]),
        Route("/detokenize", _endpoint(state, tokenize_endpoints.detokenize_handler(server)), methods=["POST"]),
        Route("/tokenizer", _endpoint(state, tokenize_endpoints.tokenizer_handler(server)), methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/ready", server.ready, methods=["GET"]),
        Route("/metrics", server.metrics, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(APIKeyMiddleware, keys=api_keys)],
        exception_handlers={HTTPException: _http_exception},
    )
    app.state.server = state
    return app
