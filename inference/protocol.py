"""Request and response models of the OpenAI-compatible API (the subset this server implements).

Field names, defaults and ranges follow the OpenAI API and vLLM's OpenAI server
(vllm/entrypoints/openai/protocol.py). Requests are validated strictly: wrong JSON types are
errors rather than coerced ("16" is not an integer), unknown fields are rejected so a typo never
silently changes behaviour, and OpenAI parameters this server does not implement are accepted only
at their no-op value (e.g. `n` must be 1) so common clients keep working.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# OpenAI allows up to 4 stop sequences; vLLM allows any number. A bound keeps the per-token stop
# check cheap; 16 is generous for real clients.
MAX_STOP_SEQUENCES = 16


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(_Strict):
    """`stream_options`: ask for a final chunk carrying token usage."""

    include_usage: bool = False


def _check_stop(value: Any) -> Any:
    """`stop` is a string or a list of non-empty strings (at most MAX_STOP_SEQUENCES)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ValueError("stop must be a string or a list of strings")
    if len(items) > MAX_STOP_SEQUENCES:
        raise ValueError(f"stop accepts at most {MAX_STOP_SEQUENCES} sequences, got {len(items)}")
    if any(s == "" for s in items):
        raise ValueError("stop sequences must not be empty strings")
    return items


class _SamplingFields(_Strict):
    """Parameters shared by completions and chat completions."""

    model: str | None = Field(default=None, description="Served model name; defaults to the one served.")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 means greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    # The engine seeds a torch generator, which takes a signed 64-bit integer.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    # vLLM extension used by benchmarks: keep generating past EOS until max_tokens.
    ignore_eos: bool = False
    # OpenAI parameters accepted only at their no-op value so standard clients work unchanged.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        return _check_stop(value)

    @model_validator(mode="after")
    def _unsupported_values(self) -> _SamplingFields:
        if self.n != 1:
            raise ValueError(f"n={self.n} is not supported; this server returns exactly one choice (n=1)")
        if self.presence_penalty != 0.0 or self.frequency_penalty != 0.0:
            raise ValueError("presence_penalty and frequency_penalty are not supported; they must be 0")
        if self.repetition_penalty not in (None, 1.0):
            raise ValueError("repetition_penalty is not supported; it must be 1 or omitted")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported; omit it")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options can only be set when stream is true")
        return self

    @property
    def include_usage_chunk(self) -> bool:
        """Whether a streamed response ends with the usage-only chunk of `stream_options`."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[int]
    # OpenAI's default for the legacy completions endpoint (vLLM keeps it).
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(type(t) is int and t >= 0 for t in value):
            return value
        if isinstance(value, list) and value and all(isinstance(p, str | list) for p in value):
            raise ValueError("batched prompts are not supported; send one prompt per request")
        raise ValueError("prompt must be a string or a non-empty list of token ids (integers >= 0)")

    @model_validator(mode="after")
    def _unsupported_completion_values(self) -> CompletionRequest:
        if self.logprobs is not None:
            raise ValueError("logprobs is not supported; omit it")
        if self.echo:
            raise ValueError("echo is not supported; it must be false")
        if self.best_of not in (None, 1):
            raise ValueError("best_of is not supported; it must be 1 or omitted")
        if self.suffix is not None:
            raise ValueError("suffix is not supported; omit it")
        return self


class TextContentPart(_Strict):
    """One part of a multi-part message content; only text is supported."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    """One message of a conversation."""

    role: Literal["system", "user", "assistant"]
    content: str | list[TextContentPart]
    name: str | None = None

    @property
    def text(self) -> str:
        """The message content as one string (text parts concatenated)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    # None means "the rest of the context", as in OpenAI's chat API and vLLM.
    max_tokens: int | None = None
    # Newer name of max_tokens in the OpenAI API; takes precedence when both are set.
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    @model_validator(mode="after")
    def _unsupported_chat_values(self) -> ChatCompletionRequest:
        if self.logprobs or self.top_logprobs is not None:
            raise ValueError("logprobs and top_logprobs are not supported; omit them")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        """max_completion_tokens if given, else max_tokens."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# ---- responses -----------------------------------------------------------------------------------

FinishReasonOut = Literal["stop", "length", "abort"]


class UsageInfo(BaseModel):
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReasonOut | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatResponseMessage
    logprobs: None = None
    finish_reason: FinishReasonOut | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: FinishReasonOut | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "inferforge"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
