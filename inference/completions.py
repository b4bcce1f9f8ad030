"""POST /v1/completions: prompts (text or token ids) in, completions out, whole or streamed."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from .engine_api import SamplingParams
from .generation import Generation, interleaved, sse, usage_of
from .logprobs import LogprobFormatter
from .protocol import CompletionChoice, CompletionRequest, CompletionResponse
from .requests import RequestHandling


class CompletionsEndpoint:
    """The /v1/completions handler."""

    def __init__(self, handling: RequestHandling) -> None:
        self.handling = handling
        self.state = handling.state

    async def __call__(self, request: Request) -> Response:
        req: CompletionRequest = await self.handling.parse_body(request, CompletionRequest)
        self.handling.check_admission(req.model)
        tokens = self.state.prompts
        prompts: list[tuple[list[int], SamplingParams]] = []
        for prompt in req.prompts:
            if isinstance(prompt, str):
                prompt_ids = await tokens.encode_text(prompt)
                params = self.handling.sampling(req, len(prompt_ids), req.max_tokens)
            else:
                prompt_ids = prompt
                # Length first: it bounds the id check's work.
                params = self.handling.sampling(req, len(prompt_ids), req.max_tokens)
                tokens.check_token_ids(prompt_ids)
            prompts.append((prompt_ids, params))
        request_id = f"cmpl-{uuid.uuid4().hex}"
        gens = self.handling.generations(request_id, "completions", prompts, req)
        await self.handling.start(request, gens)
        created = int(time.time())
        model = self.state.model_name
        if req.stream:
            return self.handling.stream(request_id, gens, self._chunks(request_id, gens, req, created, model))
        texts = await self.handling.whole_texts(request, gens)
        prompt_texts = [prompt if isinstance(prompt, str) else None for prompt in req.prompts]
        body = CompletionResponse(
            id=request_id, created=created, model=model,
            choices=[self._choice(req, gen, text, prompt_texts[gen.index // req.n])
                     for gen, text in zip(gens, texts, strict=True)],
            usage=usage_of(gens),
        )
        return Response(body.model_dump_json(), media_type="application/json",
                        headers={"X-Request-Id": request_id})

    def _choice(self, req: CompletionRequest, gen: Generation, text: str, prompt_text: str | None) -> CompletionChoice:
        """One whole choice; with echo, the prompt leads its text and (with logprobs) its tokens, as vLLM answers."""
        formatter = LogprobFormatter(self.state.tokenizer.backend_tokenizer)
        logprobs = None
        if req.echo:
            if prompt_text is None:  # token ids: their text, special tokens kept as the model saw them
                prompt_text = self.state.tokenizer.decode(gen.prompt_ids, skip_special_tokens=False)
            text = prompt_text + text
            if gen.wants_logprobs:
                logprobs = formatter.completion_prompt(gen.prompt_ids, gen.prompt_logprobs, req.logprobs)
        if gen.wants_logprobs:
            generated = formatter.completion(gen.take_logprobs())
            logprobs = generated if logprobs is None else {key: logprobs[key] + generated[key] for key in generated}
        prompt_logprobs = None
        if req.prompt_logprobs is not None and gen.prompt_logprobs is not None:
            prompt_logprobs = formatter.prompt_logprobs(gen.prompt_ids, gen.prompt_logprobs, req.prompt_logprobs)
        return CompletionChoice(index=gen.index, text=text, finish_reason=gen.finish_reason, logprobs=logprobs,
                                prompt_logprobs=prompt_logprobs)

    async def _chunks(self, request_id: str, gens: list[Generation], req: CompletionRequest,
                                 created: int, model: str) -> AsyncIterator[str]:
        # Per-token hot path: a precomputed JSON frame around the json-encoded delta, instead of a
        # model per token. The frame is exactly what CompletionResponse serializes to.
        head = (f'data: {{"id":"{request_id}","object":"text_completion","created":{created},'
                f'"model":{json.dumps(model)},"choices":[{{"index":')
        tail = ',"finish_reason":null}],"usage":null}\n\n'
        continuous = req.continuous_usage
        formatters = {gen.index: LogprobFormatter(self.state.tokenizer.backend_tokenizer) for gen in gens}
        finished = 0
        async for gen, delta in interleaved(gens):
            if delta is not None:
                logprobs = (json.dumps(formatters[gen.index].completion(gen.take_logprobs()))
                            if gen.wants_logprobs else "null")
                if continuous:
                    tail = f',"finish_reason":null}}],"usage":{usage_of(gens).model_dump_json()}}}\n\n'
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
                    usage=usage_of(gens) if continuous or (last and not req.include_usage_chunk) else None,
                )
                yield sse(final.model_dump_json())
        if req.include_usage_chunk:
            usage_chunk = CompletionResponse(id=request_id, created=created, model=model, choices=[],
                                             usage=usage_of(gens))
            yield sse(usage_chunk.model_dump_json())
        yield sse("[DONE]")
