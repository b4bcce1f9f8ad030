"""The serving settings, declared once: name, type, bounds, choices, default and description of each.

Every surface is generated from :class:`ServingSettings`, so a field added here appears everywhere:

* the server's command line (``python -m inference serve``): :func:`add_arguments` makes one flag per field
  (``--max-model-len``, or the field's ``flag``), with the field's bounds and choices, and
  :func:`from_namespace` reads the parsed flags back;
* the engine: the fields that are also ``EngineConfig`` fields pass straight through (inference/serve.py);
* the Kubernetes component: ``InferenceServiceArgs.serving`` is one of these (components/inference_service.py;
  a schema type for other Pulumi languages), and :func:`to_argv` writes it into the pod's command, the inverse
  of :func:`add_arguments`;
* the stack config: the ``inference`` section embeds these fields (stacks/config.py, with camelCase keys).

Bounds live on the field (`limited`, inference/field_limits.py) and are checked by argparse here, by
``check_limits`` in the component and by pydantic in the stack config: one rule, three error styles, each
naming the flag, the argument or the YAML key. Defaults are inference/defaults.py's (the why of each).

Plain Python only: the platform imports this on a deploy machine without torch or DeepSpeed
(tests/test_serving_settings.py checks it), and the inference image ships it with the server.
"""

import argparse
import ast
import dataclasses
import functools
import inspect
import math
import textwrap
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from . import defaults
from .field_limits import Limits, limited, limits_of

FLAG = "flag"
"""Field metadata key: the server's flag for a field whose flag is not ``--<name-with-dashes>`` (vLLM's names)."""

MAX_TP_SIZE = 8
"""Largest tensor-parallel group: one pod on one node, and Azure's GPU VMs hold at most 8 GPUs."""


class Dtype(StrEnum):
    """Weights and activations dtype (``--dtype``)."""

    AUTO = "auto"
    """bfloat16 where the hardware multiplies it natively (GPUs, AVX512-BF16/AMX CPUs), else float32 on CPUs
    (float16 on GPUs without bf16)."""
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class Embeddings(StrEnum):
    """Where ``/v1/embeddings`` comes from (``--embeddings``)."""

    OFF = "off"
    """No embeddings from the served model (the endpoint answers 404 unless the server is given a separate
    embedding model with ``--embeddings-model-dir``)."""
    SERVED = "served"
    """Pooled hidden states of the served model (tensor-parallel size 1 only)."""


class EmbeddingsPooling(StrEnum):
    """How token states become one embedding vector (``--embeddings-pooling``)."""

    MEAN = "mean"
    LAST = "last"


class ToolCallParser(StrEnum):
    """The tool-call syntax the model writes (``--tool-call-parser``, vLLM's names)."""

    HERMES = "hermes"
    """Hermes, Qwen2.5 and Qwen3 (``<tool_call>`` tags)."""
    LLAMA3_JSON = "llama3_json"
    """Llama 3.1/3.2/3.3 (a JSON object)."""
    MISTRAL = "mistral"
    """Mistral (``[TOOL_CALLS]``)."""


def setting(default: Any, *, flag: str | None = None, ge: float | None = None, le: float | None = None,
            gt: float | None = None) -> Any:
    """A settings field: its default, bounds (inference/field_limits.py) and, if not the derived one, its flag."""
    field = limited(default, ge=ge, le=le, gt=gt)
    return dataclasses.field(default=default, metadata={**field.metadata, FLAG: flag})


@dataclass(kw_only=True)
class ServingSettings:
    """What the inference server is asked to do: the same settings on its command line, in the component's
    ``serving`` argument and in the stack config's ``inference`` section (keyword-only: names, never positions)."""

    tp_size: int = setting(defaults.TP_SIZE, ge=1, le=MAX_TP_SIZE)
    """Tensor-parallel ranks (GPUs) for one model replica."""
    dtype: Dtype = Dtype(defaults.DTYPE)
    """Weights and activations dtype; auto is bfloat16 where the hardware has it (float32 on CPUs without)."""
    max_batch_size: int = setting(defaults.MAX_BATCH_SIZE, ge=1, le=1024)
    """Sequences decoded together per step (fewer while the KV pool has no free blocks for more)."""
    max_waiting: int = setting(defaults.MAX_WAITING, ge=1, le=100_000)
    """Requests queued for a batch slot before new ones get 429 with Retry-After."""
    max_model_len: int | None = setting(None, ge=2, le=1_048_576)
    """Context length, prompt + generated tokens (at least one of each); unset: the model's
    max_position_embeddings, lowered to what the KV pool holds."""
    kv_cache_memory_gib: float | None = setting(None, flag="--kv-cache-memory", gt=0, le=65536)
    """KV block pool per rank in GiB; unset: on GPUs what gpu_memory_utilization leaves after the weights,
    on CPUs 4 GiB."""
    gpu_memory_utilization: float = setting(defaults.GPU_MEMORY_UTILIZATION, gt=0, le=1)
    """GPUs, without kv_cache_memory_gib: the share of GPU memory the server fills (weights + KV pool + a
    2 GiB activation reserve)."""
    kv_block_size: int = setting(defaults.KV_BLOCK_SIZE, flag="--block-size", ge=1, le=1024)
    """Tokens per paged KV block."""
    enable_prefix_caching: bool = defaults.ENABLE_PREFIX_CACHING
    """Reuse the KV blocks of identical prompt prefixes (system prompts, RAG templates) across requests."""
    embeddings: Embeddings = Embeddings.OFF
    """``/v1/embeddings`` from the served model's pooled hidden states (served, tensor-parallel size 1 only)."""
    embeddings_pooling: EmbeddingsPooling | None = None
    """Pooling of the embeddings; unset: last with embeddings served (a decoder's last token has seen the
    whole input), mean with a separate embedding model (as BERT-style models are trained)."""
    tool_call_parser: ToolCallParser = ToolCallParser(defaults.TOOL_CALL_PARSER)
    """The tool-call syntax the model writes: hermes (Hermes, Qwen2.5, Qwen3), llama3_json (Llama 3.1-3.3),
    mistral ([TOOL_CALLS])."""
    drain_timeout_s: int = setting(defaults.DRAIN_TIMEOUT_S, flag="--drain-timeout", ge=0, le=3600)
    """Seconds in-flight requests get to finish after SIGTERM."""


# ---- what each field is -------------------------------------------------------------------------------------


def settings_fields(cls: type = ServingSettings) -> tuple[dataclasses.Field[Any], ...]:
    """The settings fields of `cls` (ServingSettings, or a declaration extending it), in order."""
    return dataclasses.fields(cls)


def flag_of(field: dataclasses.Field[Any]) -> str:
    """The server's flag for a settings field."""
    return field.metadata.get(FLAG) or "--" + field.name.replace("_", "-")


def _type_of(cls: type, field: dataclasses.Field[Any]) -> Any:
    """The field's declared type; an annotation postponed as a string (a module with `from __future__ import
    annotations`) is resolved in the module of the class that declares it."""
    if not isinstance(field.type, str):
        return field.type
    owner = next(k for k in reversed(cls.__mro__) if field.name in k.__dict__.get("__annotations__", {}))
    return typing.get_type_hints(owner)[field.name]


def value_type(cls: type, field: dataclasses.Field[Any]) -> type:
    """The field's type without `| None`: int, float, bool or an Enum."""
    kind = _type_of(cls, field)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if args else kind


def is_optional(cls: type, field: dataclasses.Field[Any]) -> bool:
    return type(None) in typing.get_args(_type_of(cls, field))


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string after it in the class body), inherited fields included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        except (OSError, TypeError, IndexError):
            continue
        statements = getattr(body, "body", [])
        for node, after in zip(statements, [*statements[1:], None], strict=True):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


# ---- the server's command line ----------------------------------------------------------------------------


def _bounded(kind: type, limits: Limits | None) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` within `limits`, with an error naming the value and the bounds."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        problem = limits.problem(value) if limits else None
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type = ServingSettings) -> None:
    """One flag per settings field of `cls`: its bounds or choices, its default and its description."""
    docs = field_docs(cls)
    for field in settings_fields(cls):
        kind = value_type(cls, field)
        shown_default = "unset" if field.default is None else field.default
        help_text = f"{docs.get(field.name, '')} (default {shown_default})".replace("``", "").replace("%", "%%")
        dest = {"dest": field.name, "default": field.default, "help": help_text}
        if kind is not bool:
            dest["metavar"] = flag_of(field).removeprefix("--").replace("-", "_").upper()
        if kind is bool:
            parser.add_argument(flag_of(field), action=argparse.BooleanOptionalAction, **dest)
        elif isinstance(kind, type) and issubclass(kind, Enum):
            # Plain strings for argparse (its "invalid choice" error lists them); from_namespace makes the members.
            dest.pop("metavar")
            parser.add_argument(flag_of(field), choices=[m.value for m in kind], **dest)
        else:
            parser.add_argument(flag_of(field), type=_bounded(kind, limits_of(field)), **dest)


def from_namespace(namespace: argparse.Namespace, cls: type = ServingSettings) -> Any:
    """The settings the parsed flags hold (choices as their Enum members)."""
    values = {}
    for field in settings_fields(cls):
        value, kind = getattr(namespace, field.name), value_type(cls, field)
        values[field.name] = kind(value) if value is not None and isinstance(kind, type) and issubclass(kind, Enum) \
            else value
    return cls(**values)


def to_argv(settings: Any, cls: type = ServingSettings) -> list[str]:
    """The flags that make the server run with `settings` (every value that is set: the pod runs what the plan
    shows, whatever defaults the image it pulls was built with). The inverse of `add_arguments`."""
    argv: list[str] = []
    for field in settings_fields(cls):
        value = getattr(settings, field.name)
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag_of(field) if value else "--no-" + flag_of(field).removeprefix("--"))
        else:
            argv += [flag_of(field), str(value.value if isinstance(value, Enum) else value)]
    return argv


def choice_problems(settings: Any, cls: type = ServingSettings) -> list[tuple[str, Any, str]]:
    """(field, value, what is allowed) for every Enum-typed setting whose value is not one of its choices (a
    caller that bypassed the type, e.g. a plain string from another Pulumi language)."""
    problems = []
    for field in settings_fields(cls):
        kind, value = value_type(cls, field), getattr(settings, field.name)
        if value is None and is_optional(cls, field):
            continue
        if isinstance(kind, type) and issubclass(kind, Enum) and value not in {m.value for m in kind}:
            problems.append((field.name, value, "one of " + ", ".join(m.value for m in kind)))
    return problems


def embeddings_problem(embeddings: str, tp_size: int, name: Mapping[str, str] | None = None,
                       instead: str = "a separate embedding model") -> str | None:
    """Why served embeddings cannot run at `tp_size`, or None; `name` maps field names to what the caller calls
    them (flags, YAML keys), `instead` says what else the caller can do."""
    if embeddings != Embeddings.SERVED or tp_size == 1:
        return None
    name = name or {}
    return (f"{name.get('embeddings', 'embeddings')} served with {name.get('tp_size', 'tp_size')} {tp_size}: "
            "the server pools the served model's own states on one rank (loading its weights a second time); "
            f"allowed: {name.get('tp_size', 'tp_size')} 1, or {instead}")
