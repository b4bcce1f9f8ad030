"""The components as one Pulumi package, `inferforge`, that any Pulumi language can use (`pulumi package add`).

provider/__main__.py serves them with Pulumi's component provider host
(`pulumi.provider.experimental.component_provider_host`). What that host expects, read from the installed SDK
(pulumi/provider/experimental/analyzer.py and component.py) and its guide
(https://www.pulumi.com/docs/iac/guides/building-extending/packages/source-based-plugin/):

- The schema is inferred from *runtime* annotations, which it does not evaluate: the `args` parameter's class
  gives the inputs, the component's annotated `pulumi.Output[...]` attributes the outputs, the docstring under
  each the description. The modules postpone annotations, so `schema_args` and `components()` resolve exactly
  those. Choices are Enums (no `Literal`); unions other than `X | None` are not allowed.
- A property is optional in the schema only if its annotation says so (`Optional`, `NotRequired`); a dataclass
  default is invisible to it. `schema_args` states it where the analyzer reads it (below).
- `construct` calls the component with a plain dict of inputs (Python names; nested types as dicts too), not
  the Args dataclass (https://github.com/pulumi/pulumi/issues/18526). `from_inputs` turns it into the Args
  instance, so omitted inputs get exactly the defaults a Python caller gets, and checks the limits the fields
  declare (components/limits.py; a schema cannot carry them), for Python callers too.
- The type token must be `<package>:index:<ClassName>`. The components had `inferforge:<area>:<Name>`; each
  keeps that as an alias (`aliased`) so stacks deployed before the change are adopted, not replaced.
"""

import dataclasses
import importlib
import inspect
import pkgutil
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import pulumi

from .limits import check_limits

PACKAGE = "inferforge"
"""The package name other languages import (`@pulumi/inferforge`, `pulumi_inferforge`, ...)."""

PYTHON_ONLY = "python_only"
"""Field metadata key: the field stays out of the schema (a Python object no other language can pass)."""

T = TypeVar("T")


def python_only(**field_kwargs: Any) -> Any:
    """A dataclass field that other languages do not see (e.g. resources to wait for; they use `dependsOn`)."""
    return dataclasses.field(metadata={PYTHON_ONLY: True}, **field_kwargs)


def in_schema(field: dataclasses.Field[Any]) -> bool:
    return not field.metadata.get(PYTHON_ONLY, False)


def _has_default(field: dataclasses.Field[Any]) -> bool:
    return field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING


def _is_optional(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation)


def schema_args(cls: type[T]) -> type[T]:
    """Class decorator (above `@dataclass`) for a component's Args and the dataclasses nested in them.

    The modules postpone annotations (`from __future__ import annotations`: evaluating SDK types in every
    signature would load most of the SDKs at import, doubling `plan`'s start-up), so each field's annotation is
    a string. This resolves them once, at class creation: `Field.type` becomes the declared type (what
    `from_inputs` and the stack config read), and the runtime `__annotations__` become the schema analyzer's
    view of the fields: a field with a default is `Optional[...]` there (any language may omit it; the default
    applies), `python_only` fields are left out.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"@schema_args goes above @dataclass on {cls.__name__}")
    module = vars(sys.modules[cls.__module__])
    own = set(cls.__dict__.get("__annotations__", {}))
    schema_view: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if isinstance(field.type, str):  # eval, not get_type_hints: pulumi.Input holds a ForwardRef it cannot resolve
            field.type = eval(field.type, module)  # noqa: S307 - an annotation written in our own source
        if field.name not in own or not in_schema(field):
            continue  # inherited fields are stated by their own class
        optional = _has_default(field) and not _is_optional(field.type)
        schema_view[field.name] = typing.Optional[field.type] if optional else field.type  # noqa: UP045
    cls.__annotations__ = schema_view
    return cls


def _dataclass_in(annotation: Any) -> type | None:
    """The dataclass an annotation names, directly or as `X | None`."""
    if _is_optional(annotation):
        candidates = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = candidates[0] if len(candidates) == 1 else None
    return annotation if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) else None


def _convert(annotation: Any, value: Any, where: str) -> Any:
    """A value the host sent, as the field's annotation says: nested dicts become their dataclasses."""
    if annotation is int and isinstance(value, float) and value.is_integer():
        # Numbers arrive as floats over the wire, and the host's own int conversion is overwritten right after
        # (pulumi/provider/experimental/component.py, map_input_properties): `size_gib=8.0` would render "8.0Gi".
        return int(value)
    nested = _dataclass_in(annotation)
    if nested is not None and isinstance(value, Mapping):
        return from_inputs(nested, value, where)
    origin, type_args = typing.get_origin(annotation), typing.get_args(annotation)
    if _is_optional(annotation):
        inner = [a for a in type_args if a is not type(None)]
        return _convert(inner[0], value, where) if len(inner) == 1 else value
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping) and len(type_args) == 2 \
            and isinstance(value, Mapping):
        return {k: _convert(type_args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence) and type_args \
            and isinstance(value, (list, tuple)):
        return [_convert(type_args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def from_inputs(cls: type[T], value: T | Mapping[str, Any], where: str | None = None) -> T:
    """The component's Args, checked against the limits its fields declare: `value` itself from a Python caller,
    or built from the provider host's dict."""
    if isinstance(value, cls):
        check_limits(value)
        return value
    where = where or cls.__name__
    if not isinstance(value, Mapping):
        raise TypeError(f"{where}: expected {cls.__name__} or a mapping of its fields, got {type(value).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise TypeError(f"{where}: unknown input(s) {unknown}; allowed: {sorted(fields)}")
    missing = sorted(n for n, f in fields.items() if not _has_default(f) and value.get(n) is None)
    if missing:
        raise TypeError(f"{where}: missing required input(s) {missing}")
    # The host leaves out what the caller did not set; None is "not set" too, so the Python default applies.
    kwargs = {n: _convert(fields[n].type, v, f"{where}.{n}") for n, v in value.items() if v is not None}
    args = cls(**kwargs)
    check_limits(args)
    return args


def aliased(opts: pulumi.ResourceOptions | None, legacy_token: str) -> pulumi.ResourceOptions:
    """`opts` plus an alias to the component's pre-package type token, so existing state is moved, not
    replaced (child URNs follow their parent's alias)."""
    return pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(aliases=[pulumi.Alias(type_=legacy_token)]))


def _resolve_annotations(component: type[pulumi.ComponentResource]) -> type[pulumi.ComponentResource]:
    """The component with its outputs' and `args`' annotations evaluated, as the schema analyzer reads them
    (it does not evaluate strings). Only these: other signatures keep naming SDK types lazily."""
    module = vars(sys.modules[component.__module__])
    outputs = component.__dict__.get("__annotations__", {})
    component.__annotations__ = {name: eval(hint, module) if isinstance(hint, str) else hint  # noqa: S307
                                 for name, hint in outputs.items()}
    init = component.__init__.__annotations__
    if isinstance(init.get("args"), str):
        init["args"] = eval(init["args"], module)  # noqa: S307 - a name written in our own source
    return component


def components() -> list[type[pulumi.ComponentResource]]:
    """Every ComponentResource defined in this package, in module then source order, ready for the schema
    analyzer: what the provider serves and the README's component reference lists."""
    package = sys.modules[__package__]  # `components` or `inferforge.components`
    found: list[tuple[str, int, type[pulumi.ComponentResource]]] = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, pulumi.ComponentResource)
                    and obj.__module__ == module.__name__):
                found.append((module.__name__, inspect.getsourcelines(obj)[1], obj))
    return [_resolve_annotations(cls) for *_, cls in sorted(found, key=lambda item: (item[0], item[1]))]
