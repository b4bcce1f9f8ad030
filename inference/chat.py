"""POST /v1/chat/completions: messages in (the chat template renders them), an assistant message out, with
tool calls parsed per `tool_choice`, whole or streamed."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import chat_template, tool_calls
from .generation import Generation, interleaved, sse, usage_of
from .logprobs import LogprobFormatter
from .protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatResponseMessage,
    NamedToolChoice,
    UsageInfo,
)
from .requests import RequestHandling


def _named_tool(req: ChatCompletionRequest) -> str | None:
    return req.tool_choice.function.name if isinstance(req.tool_choice, NamedToolChoice) else None


def chat_message(req: ChatCompletionRequest, text: str, finish_reason: str | None, fmt: tool_calls.ToolCallFormat
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



class ChatCompletionsEndpoint:
    """The /v1/chat/completions handler."""

    def __init__(self, handling: RequestHandling) -> None:
        self.handling = handling
        self.state = handling.state

    def _prompt_ids(self, req: ChatCompletionRequest) -> list[int]:
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

    async def __call__(self, request: Request) -> Response:
        req: ChatCompletionRequest = await self.handling.parse_body(request, ChatCompletionRequest)
        self.handling.check_admission(req.model)
        # The template only adds text around the contents and the tool schemas, so their sum bounds the prompt.
        chars = sum(len(m.text or "") for m in req.messages)
        chars += sum(len(tool.model_dump_json()) for tool in req.tools or ())
        prompt_ids = await self.state.prompts.encode_chat(chars, lambda: self._prompt_ids(req))
        params = self.handling.sampling(req, len(prompt_ids), req.requested_max_tokens)
        grammar = await self.state.grammars.for_request(req)
        if grammar is not None:
            params = dataclasses.replace(params, grammar=grammar)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        gens = self.handling.generations(request_id, "chat.completions", [(prompt_ids, params)], req)
        await self.handling.start(request, gens)
        created = int(time.time())
        model = self.state.model_name
        if req.stream:
            return self.handling.stream(request_id, gens, self._chunks(request_id, gens, req, created, model))
        texts = await self.handling.whole_texts(request, gens)
        backend = self.state.tokenizer.backend_tokenizer
        choices = []
        for gen, text in zip(gens, texts, strict=True):
            message, finish_reason = chat_message(req, text, gen.finish_reason, self.state.tool_format)
            choices.append(ChatChoice(
                index=gen.index, message=message, finish_reason=finish_reason,
                logprobs=LogprobFormatter(backend).chat(gen.take_logprobs()) if gen.wants_logprobs else None,
            ).model_dump())
        body = {
            "id": request_id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices,
            "usage": usage_of(gens).model_dump(),
        }
        if req.prompt_logprobs is not None and gens[0].prompt_logprobs is not None:
            # vLLM's place for it in chat: the response's, the rendered prompt's tokens (one prompt for all choices).
            body["prompt_logprobs"] = LogprobFormatter(backend).prompt_logprobs(
                gens[0].prompt_ids, gens[0].prompt_logprobs, req.prompt_logprobs)
        return JSONResponse(body, headers={"X-Request-Id": request_id})

    async def _chunks(self, request_id: str, gens: list[Generation], req: ChatCompletionRequest,
                           created: int, model: str) -> AsyncIterator[str]:
        continuous = req.continuous_usage

        def chunk(index: int, delta: ChatDelta, finish: str | None = None, usage: UsageInfo | None = None,
                  choices: bool = True, logprobs: dict[str, Any] | None = None) -> str:
            return sse(ChatCompletionChunk(
                id=request_id, created=created, model=model,
                choices=[ChatChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)]
                if choices else [],
                usage=usage if usage is not None or not continuous else usage_of(gens),
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
        async for gen, delta in interleaved(gens):
            logprobs = formatter.chat(gen.take_logprobs()) if gen.wants_logprobs and delta is not None else None
            if mode == "none" and delta is not None:
                if continuous:
                    tail = f',"finish_reason":null}}],"usage":{usage_of(gens).model_dump_json()}}}\n\n'
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
                        usage_of(gens) if last and not req.include_usage_chunk else None)
        if req.include_usage_chunk:
            yield chunk(0, ChatDelta(), usage=usage_of(gens), choices=False)
        yield sse("[DONE]")
