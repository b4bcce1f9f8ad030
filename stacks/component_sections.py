"""Stack config sections that embed a component's Args instead of re-declaring its fields.

The Args dataclass is the one declaration of a setting: its type (an Enum for a choice), default, limits
(components/limits.py) and description (the field's docstring). `embed` builds the pydantic section from the
fields a stack may choose, so the config validates exactly what the component accepts, and its errors still
name the YAML key (the section's camelCase aliases); `args()` hands the chosen values back to the component.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from inferforge.components.limits import limits_of
from inferforge.components.reference import dataclass_fields
from pydantic import BaseModel, Field, create_model


class _Embedding:
    """Mixin of a section made by `embed`: hands the embedded settings back to the component."""

    __embedded__: ClassVar[tuple[str, ...]] = ()

    def args(self) -> dict[str, Any]:
        """The embedded settings as `<Component>Args` keywords (Python names, values as validated)."""
        return {name: getattr(self, name) for name in self.__embedded__}


def embed(args: type, names: tuple[str, ...], *, base: type[BaseModel], defaults: Mapping[str, Any] | None = None,
          keys: Mapping[str, str] | None = None) -> type[BaseModel]:
    """A pydantic model over `base` whose fields `names` are the Args dataclass's fields of those names.

    `defaults` replaces a field's default where a stack needs another one (a value where the server derives one
    at start, e.g. the context length the GPU check prices); such a field is then never unset (not Optional).
    `keys` names a field's YAML key where it is not the camelCase of its name (kept for existing stacks).
    """
    defaults, keys = defaults or {}, keys or {}
    fields = {f.name: f for f in dataclasses.fields(args)}
    unknown = [n for n in names if n not in fields]
    if unknown:
        raise TypeError(f"{args.__name__} has no field(s) {unknown}; fields: {sorted(fields)}")
    docs: Mapping[str, str | None] = {f.name: f.doc for f in dataclass_fields(args)[0]}
    definitions: dict[str, Any] = {}
    for name in names:
        field = fields[name]
        limits = limits_of(field)
        bounds = limits.pydantic_kwargs() if limits else {}
        if name in keys:
            bounds["alias"] = keys[name]
        kind = field.type
        if name in defaults:
            spec = Field(defaults[name], description=docs[name], **bounds)
            if defaults[name] is not None and type(None) in typing.get_args(kind):
                kind = typing.Union[tuple(a for a in typing.get_args(kind) if a is not type(None))]  # noqa: UP007
        elif field.default is not dataclasses.MISSING:
            spec = Field(field.default, description=docs[name], **bounds)
        elif field.default_factory is not dataclasses.MISSING:
            spec = Field(default_factory=field.default_factory, description=docs[name], **bounds)
        else:
            spec = Field(description=docs[name], **bounds)
        definitions[name] = (kind, spec)
    model = create_model(f"{args.__name__}Section", __base__=(base, _Embedding), **definitions)
    model.__embedded__ = names
    return model
