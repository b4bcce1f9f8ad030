"""The OpenAI-compatible HTTP app (Starlette ASGI) over an `AsyncEngine`: routes, errors, probes and metrics.

Routes: POST /v1/completions (inference/completions.py), POST /v1/chat/completions (inference/chat.py),
POST /v1/embeddings (inference/embeddings.py), POST /tokenize, /detokenize and GET /tokenizer
(inference/tokenize_endpoints.py),
GET /v1/models, GET /health (process alive), GET /ready (engine ready and not draining), GET /metrics
(Prometheus). What the endpoints share (body parsing, admission, sampling, streaming) is inference/requests.py;
a request's token stream is inference/generation.py.

The engine works in token ids; this layer owns tokenization and chat templates (run off the event loop by
`inference.tokenization`), SSE framing, errors, metrics and per-request logs. Logs carry ids, token counts and
timings, never prompt or output text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import embeddings, errors, structured_output, tokenize_endpoints, tokenizer_bundle, tool_calls
from .auth import APIKeyMiddleware, APIKeys
from .chat import ChatCompletionsEndpoint
from .completions import CompletionsEndpoint
from .engine_api import AsyncEngine
from .generation import ClientGone, ServerState
from .metrics import CONTENT_TYPE, ServerMetrics
from .protocol import ModelCard, ModelList
from .requests import MAX_BODY_BYTES, RequestHandling
from .tokenization import PromptTokenizer

__all__ = ["MAX_BODY_BYTES", "ServerState", "create_app"]

log = logging.getLogger("inference.server")


class ServiceEndpoints:
    """The routes that serve no model output: the model list, the probes and the metrics."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

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
    handling = RequestHandling(state)
    server = ServiceEndpoints(state)
    routes = [
        Route("/v1/completions", _endpoint(state, CompletionsEndpoint(handling)), methods=["POST"]),
        Route("/v1/chat/completions", _endpoint(state, ChatCompletionsEndpoint(handling)), methods=["POST"]),
        Route("/v1/models", _endpoint(state, server.models), methods=["GET"]),
        Route("/v1/embeddings", _endpoint(state, embeddings.embeddings_handler(handling)), methods=["POST"]),
        # vLLM's paths (no /v1 prefix).
        Route("/tokenize", _endpoint(state, tokenize_endpoints.tokenize_handler(handling)), methods=["POST"]),
        Route("/detokenize", _endpoint(state, tokenize_endpoints.detokenize_handler(handling)), methods=["POST"]),
        Route("/tokenizer", _endpoint(state, tokenize_endpoints.tokenizer_handler(handling)), methods=["GET"]),
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
