"""What every OpenAI endpoint does with a request: read and validate its body, admit it, turn its sampling
fields into engine parameters, start its choices, and answer whole or as a server-sent-event stream.

The endpoints (inference/completions.py, inference/chat.py, inference/embeddings.py,
inference/tokenize_endpoints.py) are built on one `RequestHandling`; inference/server.py assembles them into
the app.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse

from . import errors, json_body
from .engine_api import SamplingParams
from .generation import ClientGone, Generation, ServerState, sse, unless_disconnected
from .protocol import ChatCompletionRequest, CompletionRequest, ignored_fields

log = logging.getLogger("inference.server")

# Largest accepted request body: a prompt at any realistic context length as JSON text or token ids
# fits many times over.
MAX_BODY_BYTES = 8 * 1024 * 1024
# Bodies up to this size are decoded on the event loop (well under a millisecond); larger ones in a
# worker thread.
PARSE_INLINE_MAX_BYTES = 64 * 1024
# The "request fields ignored" log line names at most this many fields.
MAX_LOGGED_FIELD_NAMES = 32


def requested_logprobs(req: CompletionRequest | ChatCompletionRequest) -> int | None:
    """How many top alternatives the engine reports per token; None for no logprobs."""
    if isinstance(req, ChatCompletionRequest):
        return (req.top_logprobs or 0) if req.logprobs else None
    return req.logprobs



class RequestHandling:
    """The steps every endpoint shares, bound to one `ServerState`."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def parse_body(self, request: Request, model: type[Any]) -> Any:
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

    def check_admission(self, requested_model: str | None) -> None:
        state = self.state
        if requested_model is not None and requested_model != state.model_name:
            raise errors.model_not_found(requested_model, state.model_name)
        if state.engine.is_dead:
            raise errors.engine_dead()
        if state.draining:
            raise errors.draining()

    def sampling(self, req: CompletionRequest | ChatCompletionRequest, prompt_len: int,
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
        least = 0 if req.wants_prompt else 1  # with echo or prompt_logprobs, the prompt alone is an answer
        if max_tokens is None:
            max_tokens = max_len - prompt_len
        elif max_tokens < least:
            allowed = "at least 1 (0 with echo or prompt_logprobs)" if least else "at least 0"
            raise errors.bad_request(f"max_tokens must be {allowed}, got {json_body.quote(max_tokens)}",
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
            logprobs=requested_logprobs(req),
            prompt_logprobs=req.engine_prompt_logprobs,
        )

    def generations(self, request_id: str, endpoint: str, prompts: list[tuple[list[int], SamplingParams]],
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

    async def whole_texts(self, request: Request, gens: list[Generation]) -> list[str]:
        try:
            return await unless_disconnected(request, asyncio.gather(*(gen.text() for gen in gens)))
        finally:
            for gen in gens:
                await gen.close()

    async def start(self, request: Request, gens: list[Generation]) -> None:
        """Admission + first token of every choice, abandoned if the client leaves; an admission
        error closes every choice."""
        try:
            await unless_disconnected(request, asyncio.gather(*(gen.start() for gen in gens)))
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

    def stream(self, request_id: str, gens: list[Generation], chunks: AsyncIterator[str]) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            try:
                async for chunk in chunks:
                    yield chunk
            except Exception as exc:  # headers are sent: report in-band, as vLLM does
                mapped = errors.from_engine_exception(exc)
                if mapped is None:
                    log.exception("stream failed", extra={"fields": {"request_id": request_id}})
                    mapped = errors.internal_error()
                yield sse(json.dumps(mapped.to_body()))
                yield sse("[DONE]")
            finally:
                # Also runs when the client disconnects (Starlette cancels this generator).
                for gen in gens:
                    await gen.close()

        return StreamingResponse(
            body(), media_type="text/event-stream",
            headers={"X-Request-Id": request_id, "Cache-Control": "no-cache"},
        )
