"""Request and response models of the OpenAI-compatible API (the subset this server implements).

Field names, defaults and ranges follow the OpenAI API and vLLM's OpenAI server
(vllm/entrypoints/openai/protocol.py). Like vLLM, requests are parsed tolerantly and validated
strictly: fields this server does not know are accepted and ignored (the server counts and logs
their names, never their values; `ignored_fields` lists them), so stock clients and agent
frameworks that send newer or vendor-specific parameters keep working; fields it knows are
validated strictly (wrong JSON types are errors rather than coerced, "16" is not an integer), and
OpenAI parameters it knows but does not implement are accepted only at their no-op value (e.g.
`presence_penalty` must be 0), so a request never silently gets behaviour it did not ask for.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# OpenAI allows up to 4 stop sequences; vLLM allows any number. A bound keeps the per-token stop
# check cheap; 16 is generous for real clients.
MAX_STOP_SEQUENCES = 16
# Choices of one request (n x prompts): each is a sequence in the batch; more would let one request
# take the whole waiting queue.
MAX_CHOICES = 64
# OpenAI: up to 20 top alternatives (vLLM's default max_logprobs is 20 too).
MAX_TOP_LOGPROBS = 20


class _Strict(BaseModel):
    # extra="allow" keeps unknown fields in `model_extra`, so `ignored_fields` can name them.
    model_config = ConfigDict(strict=True, extra="allow")


def ignored_fields(model: BaseModel) -> list[str]:
    """Names of the unknown fields in a parsed request, nested ones as `messages[].name`; no values."""
    names: list[str] = []

    def visit(node: BaseModel, prefix: str) -> None:
        names.extend(prefix + key for key in (node.model_extra or {}))
        for field in type(node).model_fields:
            value = getattr(node, field)
            if isinstance(value, BaseModel):
                visit(value, f"{prefix}{field}.")
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, BaseModel):
                        visit(item, f"{prefix}{field}[].")

    visit(model, "")
    return list(dict.fromkeys(names))


class StreamOptions(_Strict):
    """`stream_options`: ask for a final chunk carrying token usage (and, as vLLM's extension
    `continuous_usage_stats`, the usage so far on every chunk: what a metering proxy such as the
    gateway needs to charge a stream the client left mid-way)."""

    include_usage: bool = False
    continuous_usage_stats: bool = False


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
    # vLLM's sampling extensions (sent by many clients through extra_body): keep the k most likely
    # tokens (0 or -1 disables), and drop tokens less likely than min_p x the most likely one.
    top_k: int = Field(default=0, ge=-1, le=2**31 - 1)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    # The engine seeds a torch generator, which takes a signed 64-bit integer.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, description="Choices per prompt.")
    # vLLM extension used by benchmarks: keep generating past EOS until max_tokens.
    ignore_eos: bool = False
    # vLLM extension: each prompt token's logprob given the tokens before it, with the k most likely alternatives
    # (the choice's, or with chat the response's, `prompt_logprobs`). Evaluation harnesses score with it.
    prompt_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
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
        if self.presence_penalty != 0.0 or self.frequency_penalty != 0.0:
            raise ValueError("presence_penalty and frequency_penalty are not supported; they must be 0")
        if self.repetition_penalty not in (None, 1.0):
            raise ValueError("repetition_penalty is not supported; it must be 1 or omitted")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported; omit it")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options can only be set when stream is true")
        if self.prompt_logprobs is not None and self.stream:
            raise ValueError("prompt_logprobs is not available when stream is true (as in vLLM); set stream false")
        return self

    @property
    def wants_prompt(self) -> bool:
        """Whether the response reports the prompt itself (prompt logprobs, or echo): max_tokens may be 0."""
        return self.prompt_logprobs is not None

    @property
    def engine_prompt_logprobs(self) -> int | None:
        """The alternatives per prompt token the engine computes (None: no prompt logprobs)."""
        return self.prompt_logprobs

    @property
    def include_usage_chunk(self) -> bool:
        """Whether a streamed response ends with the usage-only chunk of `stream_options`."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """Whether every streamed chunk carries the usage so far (vLLM: needs include_usage too)."""
        return self.include_usage_chunk and bool(self.stream_options and self.stream_options.continuous_usage_stats)


class CompletionRequest(_SamplingFields):
    """POST /v1/completions."""

    # One prompt (text or token ids) or a list of them (a batch: n choices for each, in order).
    prompt: str | list[int] | list[str] | list[list[int]]
    # OpenAI's default for the legacy completions endpoint (vLLM keeps it).
    max_tokens: int | None = 16
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value:
            if all(_is_token_id(t) for t in value) or all(isinstance(p, str) for p in value):
                return value
            if all(isinstance(p, list) and p and all(_is_token_id(t) for t in p) for p in value):
                return value
        raise ValueError("prompt must be a string, a non-empty list of token ids (integers >= 0), or a "
                         "non-empty list of strings or of token-id lists")

    @model_validator(mode="after")
    def _unsupported_completion_values(self) -> CompletionRequest:
        if self.echo and self.stream:
            raise ValueError("echo is not supported when stream is true; set stream false")
        if self.best_of not in (None, self.n):
            raise ValueError("best_of is not supported; omit it or set it equal to n")
        if self.suffix is not None:
            raise ValueError("suffix is not supported; omit it")
        if len(self.prompts) * self.n > MAX_CHOICES:
            total = len(self.prompts) * self.n
            raise ValueError(f"{len(self.prompts)} prompts x n={self.n} = {total} choices exceed the limit "
                             f"of {MAX_CHOICES} choices per request")
        return self

    @property
    def wants_prompt(self) -> bool:
        return self.echo or self.prompt_logprobs is not None

    @property
    def engine_prompt_logprobs(self) -> int | None:
        """The alternatives per prompt token the engine computes: for `prompt_logprobs`, and for echo's logprobs
        (the prompt's tokens then carry `logprobs` alternatives, as vLLM answers)."""
        wanted = [k for k in (self.prompt_logprobs, self.logprobs if self.echo else None) if k is not None]
        return max(wanted) if wanted else None

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts of this request: one, or each of a batch."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            return [prompt]  # type: ignore[list-item]
        return list(prompt)  # type: ignore[arg-type]


def _is_token_id(value: Any) -> bool:
    return type(value) is int and value >= 0


class TextContentPart(_Strict):
    """One part of a multi-part message content; only text is supported."""

    type: Literal["text"]
    text: str


class ToolCallFunction(_Strict):
    """The function an assistant turn called: its name and its arguments as a JSON string."""

    name: str
    arguments: str


class ToolCall(_Strict):
    """One tool call of an earlier assistant turn, sent back so the model sees its own call."""

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


# `developer` is OpenAI's newer name for `system` (o1 and later); chat templates only know `system`.
ROLE_ALIASES = {"developer": "system"}


class ChatMessage(_Strict):
    """One message of a conversation."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    # assistant turns: the tool calls it made; tool turns: which call this result answers.
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _fields_fit_the_role(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"content is required for a {self.role} message"
                             + (" (or tool_calls)" if self.role == "assistant" else ""))
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"tool_calls is only allowed in assistant messages, not {self.role}")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("tool_call_id is required for a tool message (the id of the call it answers)")
        return self

    @property
    def text(self) -> str | None:
        """The message content as one string (text parts concatenated); None when absent."""
        if self.content is None or isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def to_template(self) -> dict[str, Any]:
        """The message as chat templates expect it (Hugging Face's convention, as vLLM renders it)."""
        out: dict[str, Any] = {"role": ROLE_ALIASES.get(self.role, self.role), "content": self.text or ""}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            # Templates index arguments as a mapping (`tool_call.arguments | tojson`); OpenAI sends a
            # JSON string. Parsed like vLLM does; a string that is not a JSON object is kept as is.
            out["tool_calls"] = [
                {"id": call.id, "type": call.type,
                 "function": {"name": call.function.name, "arguments": _json_object_or_text(call.function.arguments)}}
                for call in self.tool_calls
            ]
        return out


def _json_object_or_text(text: str) -> Any:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    return value if isinstance(value, dict) else text


class _ChatRendering(_Strict):
    """vLLM's chat-template extensions, shared by chat completions and /tokenize."""

    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    # vLLM refuses a per-request template unless the operator trusts clients with it; so do we
    # (a template is code the server runs). The server-wide one comes from --chat-template.
    chat_template: str | None = None

    @field_validator("chat_template")
    @classmethod
    def _no_request_template(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError("a per-request chat template is not accepted; the server's template is used "
                             "(operators set it with --chat-template)")
        return value


class FunctionDefinition(_Strict):
    """A function the model may call: OpenAI's `tools[].function`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    # A JSON Schema object for the arguments; checked as one (Draft 2020-12, OpenAI's dialect).
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_json_schema(value)


def check_json_schema(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """`value` if it is a valid JSON Schema (Draft 2020-12, OpenAI's dialect), else ValueError saying where."""
    if value is None:
        return value
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
    return value


class Tool(_Strict):
    """One entry of `tools`; only functions exist in the API."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    """`tool_choice` naming the function to call."""

    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Strict):
    """`response_format.json_schema`: the schema the reply must follow (OpenAI's structured outputs)."""

    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    # `schema` would shadow a BaseModel attribute; the JSON name stays `schema`.
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    # Enforced whether or not `strict` is set (as vLLM does): a constrained reply always validates.
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_json_schema(value)


class ResponseFormat(_Strict):
    """`response_format`: plain text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object ({name, schema, strict})")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"json_schema is only allowed with type json_schema, not {self.type}")
        return self

    @property
    def reply_schema(self) -> dict[str, Any] | None:
        """The JSON Schema the reply must follow; None for plain text."""
        if self.type == "text":
            return None
        if self.type == "json_object" or self.json_schema is None or self.json_schema.schema_ is None:
            return {"type": "object"}
        return self.json_schema.schema_


class ChatCompletionRequest(_ChatRendering, _SamplingFields):
    """POST /v1/chat/completions."""

    tools: list[Tool] | None = None
    # "none": answer in text; "auto": the model decides and calls are parsed; "required": a grammar
    # makes the model call one of the tools; a named function: the call is started for the model and
    # a grammar makes its arguments follow the function's parameters schema.
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _tools(self) -> ChatCompletionRequest:
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: function names must be unique")
        choice = self.tool_choice
        if choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names function {choice.function.name[:64]!r}, which is not in tools")
        return self

    @property
    def tool_mode(self) -> str:
        """none | auto | required | named (OpenAI's default: auto when tools are given, else none)."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        return self.tool_choice or ("auto" if self.tools else "none")

    # None means "the rest of the context", as in OpenAI's chat API and vLLM.
    max_tokens: int | None = None
    # Newer name of max_tokens in the OpenAI API; takes precedence when both are set.
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        """max_completion_tokens if given, else max_tokens."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class TokenizeCompletionRequest(_Strict):
    """POST /tokenize with a prompt (vLLM's shape)."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(_ChatRendering):
    """POST /tokenize with messages, rendered as /v1/chat/completions renders them (vLLM's shape)."""

    model: str | None = None
    # The chat template renders the tools into the prompt, so a count without them would be short
    # (the gateway reserves exactly this count before admitting a chat request).
    tools: list[Tool] | None = None
    # The chat template already holds the special tokens.
    add_special_tokens: bool = False
    return_token_strs: bool = False


class DetokenizeRequest(_Strict):
    """POST /detokenize."""

    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]


# ---- responses -----------------------------------------------------------------------------------


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


FinishReasonOut = Literal["stop", "length", "abort", "tool_calls"]


class UsageInfo(BaseModel):
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: FinishReasonOut | None
    # vLLM's shape: null for the first token, then {token id: {"logprob", "rank", "decoded_token"}} per token.
    prompt_logprobs: list[dict[str, dict[str, Any]] | None] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatResponseMessage
    logprobs: dict[str, Any] | None = None
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
    tool_calls: list[dict[str, Any]] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: dict[str, Any] | None = None
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
