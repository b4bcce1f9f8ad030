"""Grammar-constrained decoding: `response_format` (json_object, json_schema) and tool-call grammars.

Library: llguidance (guidance-ai; also a vLLM and SGLang backend). Chosen over xgrammar and
outlines-core by `python -m inference.bench.grammar_masks` on this machine's CPU and by
correctness (numbers in inference/README.md):
  * per-token cost: xgrammar's masks are cheapest (~3 us mean), llguidance's ~20-25 us, outlines-core's
    ~1-35 us but its index is built up front (0.6 s at a 32k vocabulary, growing with vocab x schema).
    All are far below a decode step (milliseconds).
  * correctness: xgrammar compiles schemas with keywords it does not implement (`not`, a remote
    `$ref`) into grammars that accept documents violating them, so "the output validates" would
    not hold; llguidance refuses them with an error naming the keyword, which becomes a 400.
  * bounded work: llguidance builds its lexer lazily with fuel limits per mask step (a 20,000-value
    enum compiles in 0.25 s vs 2.8 s in xgrammar, which also held the GIL for >100 ms), so a hostile
    schema costs little; outlines-core is regex-only (no recursive schemas or free-form json_object).
  * no dependencies (xgrammar pulls torch, transformers, triton and tvm-ffi).

Ownership: the HTTP layer (`GrammarCompiler`, rank 0) turns a request into an llguidance grammar,
compiles it in a bounded worker pool with a time limit (a schema it cannot compile, or cannot
compile in time, is a 400 naming the field), and hands the engine an immutable `Grammar`. The engine
gives every sequence its own `Constraint` (matcher state: continuous batching mixes constrained and
free sequences, and the n choices of one request advance separately) and masks the logits of
constrained rows before sampling. Sampling happens on rank 0 only, so under tensor parallelism the
masks exist on rank 0 only; the other ranks see the same token ids as always.

Objects that declare `properties` and say nothing about others get no undeclared properties
(`close_objects`, as xgrammar's strict mode in vLLM). JSON is produced with OpenAI's/`json.dumps`'
separators (", " and ": ") and no other whitespace: bounded output that models trained on such JSON
follow naturally, and that a small model cannot fill with endless whitespace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from . import errors, tool_calls

log = logging.getLogger("inference.structured_output")

# Compile time limit per request. llguidance compiles lazily (typical schemas in a few ms); a
# schema that takes longer is refused with a 400 instead of holding the request.
COMPILE_TIMEOUT_S = 5.0
# Concurrent compiles: a compile that exceeds its time limit cannot be interrupted (native code),
# so the pool is small and bounded; later requests wait for it within their own time limit.
COMPILE_WORKERS = 2
# Compiled grammars kept for reuse (agents resend the same schema and tools on every turn).
CACHE_SIZE = 64
# JSON compile options, applied over anything a client puts in `x-guidance` (llguidance's in-schema
# options): `lenient` would skip unimplemented keywords and break the validation guarantee.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": False,
}
# Error messages from the library quote the grammar; keep them readable.
MAX_ERROR_CHARS = 400


class GrammarError(ValueError):
    """The grammar library cannot compile this grammar; the message says why."""


@dataclass(frozen=True)
class GrammarSource:
    """What to compile: an llguidance grammar (JSON-serialised) and the request field it came from."""

    grammar: str
    field: str
    parts: tuple[tuple[str, str], ...] = ()
    """(field, grammar) of each component, compiled one by one to name the culprit after a failure."""


class Grammar:
    """A compiled grammar: immutable, shared by every sequence that follows it (engine side)."""

    def __init__(self, prototype: Any, mask_words: int) -> None:
        self._prototype = prototype
        self.mask_words = mask_words

    def new_constraint(self) -> Constraint:
        """A fresh matcher for one sequence (copying the compiled prototype is cheap)."""
        return Constraint(self._prototype.deep_copy(), self.mask_words)


class Constraint:
    """One sequence's position in its grammar (rank 0, engine thread)."""

    __slots__ = ("matcher", "mask_words", "failed")

    def __init__(self, matcher: Any, mask_words: int) -> None:
        self.matcher = matcher
        self.mask_words = mask_words
        self.failed = False

    def fill_mask(self, row: torch.Tensor, eos_ids: Iterable[int]) -> None:
        """Write the allowed next tokens into `row` (int32 bitmask); EOS ids are allowed where the
        grammar may end. A matcher in an error state (a resource limit hit) allows only EOS."""
        if not self.matcher.is_error():
            self.matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        if self.matcher.is_error():
            if not self.failed:
                self.failed = True
                log.warning("grammar matcher failed; ending the sequence",
                            extra={"fields": {"error": self.matcher.get_error()[:MAX_ERROR_CHARS]}})
            row.zero_()
        elif not self.matcher.is_accepting():
            return
        for token in eos_ids:
            if token < row.numel() * 32:
                row[token // 32] |= _bit(token % 32)

    def accept(self, token: int) -> None:
        """Advance past a sampled token (one the mask allowed)."""
        self.matcher.consume_token(token)

    @property
    def finished(self) -> bool:
        """True once the grammar is complete and admits no further token (or the matcher failed)."""
        return self.failed or self.matcher.is_stopped()


def _bit(index: int) -> int:
    """int32 value with bit `index` set (bit 31 is the sign bit)."""
    return (1 << index) - (1 << 32 if index == 31 else 0)


_SHIFTS = torch.arange(32, dtype=torch.int32)


def constrain_logits(logits: torch.Tensor, constraints: Sequence[Constraint | None],
                     eos_ids: Iterable[int]) -> torch.Tensor:
    """`logits` ([rows, vocab]) with every token a row's grammar forbids set to -inf (a copy when
    any row is constrained; the caller's raw logits stay for logprobs)."""
    rows = [i for i, c in enumerate(constraints) if c is not None]
    if not rows:
        return logits
    eos = tuple(eos_ids)
    words = max(constraints[i].mask_words for i in rows)  # type: ignore[union-attr]
    bitmask = torch.zeros((len(rows), words), dtype=torch.int32)
    for j, i in enumerate(rows):
        constraints[i].fill_mask(bitmask[j], eos)  # type: ignore[union-attr]
    vocab = logits.shape[1]
    allowed = ((bitmask.unsqueeze(-1) >> _SHIFTS) & 1).view(len(rows), -1).bool()
    if allowed.shape[1] < vocab:  # ids past the tokenizer's vocabulary are never allowed
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]))
    out = logits.clone()
    index = torch.tensor(rows, dtype=torch.long)
    out.index_copy_(0, index, out.index_select(0, index).masked_fill(~allowed[:, :vocab], float("-inf")))
    return out


# ---- grammars of a request (HTTP layer) -------------------------------------------------------------


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {**close_objects(schema), "x-guidance": JSON_OPTIONS}


_SUBSCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames",
              "unevaluatedItems", "unevaluatedProperties", "additionalItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_OPEN_KEYS = ("additionalProperties", "patternProperties", "unevaluatedProperties")


def close_objects(schema: Any, in_all_of: bool = False) -> Any:
    """`schema` with `additionalProperties: false` on every object that declares `properties` and
    says nothing about other properties (xgrammar's strict mode in vLLM, OpenAI's strict mode).
    JSON Schema allows any extra property there, which a model would fill with whatever it likes
    (a small one until max_tokens); the reply still validates against the original schema. A bare
    `{"type": "object"}` stays free-form, and members of `allOf` are left open (their properties
    combine)."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: close_objects(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            out[key] = [close_objects(sub, in_all_of=key == "allOf") for sub in value]
        elif key in _SUBSCHEMA:
            out[key] = close_objects(value)
        else:
            out[key] = value
    if "properties" in out and not in_all_of and "allOf" not in out and not any(k in out for k in _OPEN_KEYS):
        out["additionalProperties"] = False
    return out


def _lark_json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps(_json_schema(schema), ensure_ascii=True)


def _lark_literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)


def _tool_call_rules(tools: list[Any], fmt: tool_calls.ToolCallFormat
                     ) -> tuple[list[str], list[tuple[str, str]]]:
    """Lark rules of `call`: one call of any of `tools` in `fmt`'s syntax, each with its own parameters
    schema as a separate %json (so every schema's own `#/$defs/...` references resolve)."""
    alternatives, rules, parts = [], [], []
    for i, tool in enumerate(tools):
        fn = tool.function
        prefix = fmt.call_prefix(fn.name)
        parameters = fn.parameters or {"type": "object"}
        rules.append(f"args_{i}: {_lark_json(parameters)}")
        alternatives.append(f"{_lark_literal(prefix)} args_{i} {_lark_literal(fmt.call_suffix)}")
        parts.append((f"tools.{i}.function.parameters", _schema_grammar(parameters)))
    return [f"call: {' | '.join(alternatives)}", *rules], parts


def _schema_grammar(schema: dict[str, Any]) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(close_objects(schema), overrides=JSON_OPTIONS)


def _lark_grammar(lark: str) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_lark(lark)


def request_grammar(req: Any, fmt: tool_calls.ToolCallFormat | None = None) -> GrammarSource | None:
    """The grammar a chat request's reply must follow, or None when it is unconstrained. Tool calls
    are written in `fmt`'s syntax (the deployment's `--tool-call-parser`; default Hermes), so the
    server's parser reads what the grammar made the model write.

    * tool_choice named: the call is opened in the prompt; the grammar is its arguments (the
      function's parameters schema) and the closing text (Hermes: `}</tool_call>`).
    * tool_choice required: one or more calls of the given tools (one when `parallel_tool_calls`
      is false).
    * response_format json_object / json_schema: the JSON document; with tool_choice auto, either
      that document or tool calls.
    """
    fmt = fmt or tool_calls.HermesFormat()
    mode = req.tool_mode
    schema = req.response_format.reply_schema if req.response_format is not None else None
    if mode == "named":
        name = req.tool_choice.function.name
        index, tool = next((i, t) for i, t in enumerate(req.tools) if t.function.name == name)
        lark = f"start: args {_lark_literal(fmt.call_suffix + fmt.calls_close)}\n" \
               f"args: {_lark_json(tool.function.parameters or {'type': 'object'})}"
        return GrammarSource(_lark_grammar(lark), f"tools.{index}.function.parameters")
    if mode == "required" or (mode == "auto" and schema is not None):
        call_rules, parts = _tool_call_rules(req.tools, fmt)
        calls = f"call ({_lark_literal(fmt.separator)} call)*" if req.parallel_tool_calls else "call"
        if fmt.calls_open or fmt.calls_close:
            calls = f"{_lark_literal(fmt.calls_open)} {calls} {_lark_literal(fmt.calls_close)}"
        lines = [f"calls: {calls}", *call_rules]
        if mode == "required":
            lines.insert(0, "start: calls")
        else:
            lines[0:0] = ["start: answer | calls", f"answer: {_lark_json(schema)}"]
            parts.append(("response_format", _schema_grammar(schema)))
        return GrammarSource(_lark_grammar("\n".join(lines)), "tools" if mode == "required" else
                             "response_format", tuple(parts))
    if schema is not None:
        grammar = _schema_grammar(schema)
        field = "response_format.json_schema.schema" if req.response_format.type == "json_schema" \
            else "response_format"
        return GrammarSource(grammar, field)
    return None


class GrammarCompiler:
    """Compiles request grammars for one tokenizer, bounded in time and concurrency, with a cache."""

    def __init__(self, tokenizer: Any, vocab_size: int | None = None,
                 timeout_s: float = COMPILE_TIMEOUT_S, tool_format: tool_calls.ToolCallFormat | None = None) -> None:
        self.timeout_s = timeout_s
        # The deployment's call syntax (--tool-call-parser): tool_choice grammars write it.
        self.tool_format = tool_format or tool_calls.HermesFormat()
        self._hf_tokenizer = tokenizer
        self._vocab_size = max(vocab_size or 0, len(tokenizer))
        self._ll_tokenizer: Any = None
        self._lock = threading.Lock()  # the cache
        self._tokenizer_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=COMPILE_WORKERS, thread_name_prefix="grammar-compile")
        self._cache: OrderedDict[str, Grammar] = OrderedDict()

    def _tokenizer(self) -> Any:
        # Built on first use (about a second for a 150k vocabulary), in the compile pool.
        with self._tokenizer_lock:
            if self._ll_tokenizer is None:
                import llguidance.hf

                self._ll_tokenizer = llguidance.hf.from_tokenizer(self._hf_tokenizer, n_vocab=self._vocab_size)
            return self._ll_tokenizer

    def _compile_now(self, source: GrammarSource) -> Grammar:
        import llguidance

        with self._lock:
            cached = self._cache.get(source.grammar)
            if cached is not None:
                self._cache.move_to_end(source.grammar)
                return cached
        tokenizer = self._tokenizer()
        matcher = llguidance.LLMatcher(tokenizer, source.grammar, log_level=0)
        if matcher.is_error():
            # Name the component that fails (a tool's parameters, the response schema) when possible.
            for field, grammar in source.parts:
                part = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
                if part.is_error():
                    raise GrammarError(f"{field}: {part.get_error()[:MAX_ERROR_CHARS]}")
            raise GrammarError(f"{source.field}: {matcher.get_error()[:MAX_ERROR_CHARS]}")
        grammar = Grammar(matcher, (self._vocab_size + 31) // 32)
        with self._lock:
            self._cache[source.grammar] = grammar
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return grammar

    async def compile(self, source: GrammarSource) -> Grammar:
        """The compiled grammar, or a 400 naming the field when it cannot be compiled in time."""
        future = asyncio.wrap_future(self._pool.submit(self._compile_now, source))
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except GrammarError as exc:
            raise errors.bad_request(f"{exc} (the grammar library cannot compile this schema for "
                                     "constrained decoding)", code="invalid_schema") from None
        except TimeoutError:
            raise errors.bad_request(
                f"{source.field}: the schema could not be compiled for constrained decoding within "
                f"{self.timeout_s:g}s; simplify it", code="invalid_schema") from None

    async def for_request(self, req: Any) -> Grammar | None:
        """The compiled grammar of a chat request, or None when its reply is unconstrained."""
        try:
            source = request_grammar(req, self.tool_format)
        except (ValueError, TypeError) as exc:  # a schema llguidance cannot even serialise
            raise errors.bad_request(f"response_format/tools: {str(exc)[:MAX_ERROR_CHARS]}",
                                     code="invalid_schema") from None
        return None if source is None else await self.compile(source)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
