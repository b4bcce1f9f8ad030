"""`POST /tokenize` and `POST /detokenize`, with vLLM's request and response shapes.

/tokenize takes either `prompt` (encoded as /v1/completions encodes it: special tokens added by
default) or `messages` (rendered by the same chat template code as /v1/chat/completions, so the
count is exactly the prompt a chat request would have) and answers
`{"count", "max_model_len", "tokens", "token_strs"}`. /detokenize takes `tokens` and answers
`{"prompt"}`. Both run the tokenizer in a worker thread: a large input must not stall the event
loop (and with it every stream and /health). `GET /tokenizer` serves the tokenizer itself as files
(inference.tokenizer_bundle), for a gateway that counts in its own process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from . import chat_template, errors, json_body
from .protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)

if TYPE_CHECKING:
    from .requests import RequestHandling

Handler = Callable[[Request], Awaitable[Response]]


class _TokenizeBody:
    """Chooses the /tokenize variant by the presence of `messages`, as vLLM's union does."""

    @staticmethod
    def model_validate(data: dict[str, Any]) -> TokenizeChatRequest | TokenizeCompletionRequest:
        if "messages" in data:
            return TokenizeChatRequest.model_validate(data)
        return TokenizeCompletionRequest.model_validate(data)


def _json(body: Any) -> Response:
    return Response(body.model_dump_json(), media_type="application/json")


def tokenize_handler(server: RequestHandling) -> Handler:
    state = server.state

    def encode(req: TokenizeChatRequest | TokenizeCompletionRequest) -> TokenizeResponse:
        tokenizer = state.tokenizer
        if isinstance(req, TokenizeChatRequest):
            ids = chat_template.render_prompt_ids(
                tokenizer, req.messages, override=state.chat_template,
                tools=[tool.model_dump(exclude_none=True) for tool in req.tools] if req.tools else None,
                add_generation_prompt=req.add_generation_prompt,
                continue_final_message=req.continue_final_message,
                add_special_tokens=req.add_special_tokens,
            )
        else:
            ids = tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        strs = tokenizer.convert_ids_to_tokens(ids) if req.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=state.engine.max_model_len, tokens=ids,
                                token_strs=strs)

    async def tokenize(request: Request) -> Response:
        req = await server.parse_body(request, _TokenizeBody)
        if req.model is not None and req.model != state.model_name:
            raise errors.model_not_found(req.model, state.model_name)
        return _json(await state.prompts.run(encode, req))

    return tokenize


def detokenize_handler(server: RequestHandling) -> Handler:
    state = server.state

    async def detokenize(request: Request) -> Response:
        req: DetokenizeRequest = await server.parse_body(request, DetokenizeRequest)
        if req.model is not None and req.model != state.model_name:
            raise errors.model_not_found(req.model, state.model_name)
        vocab = len(state.tokenizer)
        bad = next((i for i, t in enumerate(req.tokens) if t >= vocab), None)
        if bad is not None:
            raise errors.bad_request(
                f"tokens.{bad}: token id {json_body.quote(req.tokens[bad])} is out of range; token ids must "
                f"be in [0, {vocab})", code="invalid_parameter")
        text = await state.prompts.run(state.tokenizer.decode, req.tokens)
        return _json(DetokenizeResponse(prompt=text))

    return detokenize


def tokenizer_handler(server: RequestHandling) -> Handler:
    """`GET /tokenizer`: the tokenizer's files, the override chat template and the context length, with their
    hash (inference.tokenizer_bundle), so the gateway counts prompts in-process exactly as /tokenize does."""
    state = server.state

    async def tokenizer(request: Request) -> Response:
        if state.tokenizer_bundle is None:
            raise errors.APIError(404, "This server cannot serve its tokenizer as files; count with /tokenize.",
                                  "invalid_request_error", "tokenizer_unavailable")
        return Response(state.tokenizer_bundle, media_type="application/json")

    return tokenizer
