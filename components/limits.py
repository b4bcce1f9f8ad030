"""Limits of a component argument, declared once on its Args field.

`soft_delete_retention_days: int = limited(90, ge=7, le=90)` is the only place the range is written: the
component checks it for every caller (`check_limits`, run by `package.from_inputs` at the top of each
component, so Python callers and other Pulumi languages alike), and the stack config section that embeds the
field gives the same bounds to pydantic (`Limits.pydantic_kwargs`), whose error names the YAML key.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any

LIMITS = "limits"
"""Field metadata key holding the field's `Limits`."""


@dataclass(frozen=True)
class Limits:
    """Inclusive bounds of a numeric argument (None: unbounded on that side)."""

    ge: int | float | None = None
    le: int | float | None = None

    def problem(self, value: Any) -> str | None:
        """Why `value` is out of bounds, or None. Values not known yet (Outputs) are the engine's to check."""
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        if (self.ge is not None and value < self.ge) or (self.le is not None and value > self.le):
            return f"allowed {self}"
        return None

    def pydantic_kwargs(self) -> dict[str, int | float]:
        return {k: v for k, v in (("ge", self.ge), ("le", self.le)) if v is not None}

    def __str__(self) -> str:
        if self.ge is not None and self.le is not None:
            return f"{self.ge} to {self.le}"
        return f">= {self.ge}" if self.ge is not None else f"<= {self.le}"


def limited(default: Any = dataclasses.MISSING, *, ge: int | float | None = None, le: int | float | None = None,
            **field_kwargs: Any) -> Any:
    """A dataclass field with inclusive bounds (and the default, if any)."""
    return dataclasses.field(default=default, metadata={LIMITS: Limits(ge=ge, le=le)}, **field_kwargs)


def limits_of(field: dataclasses.Field[Any]) -> Limits | None:
    return field.metadata.get(LIMITS)


class ArgsOutOfLimits(ValueError):
    """A component argument outside the limits its Args field declares; names the field, value and bounds."""


def check_limits(args: Any) -> None:
    """Raise ArgsOutOfLimits for the first field of the Args dataclass `args` (or of a dataclass nested in it)
    outside its declared limits."""
    for field in dataclasses.fields(args):
        limits = limits_of(field)
        value = getattr(args, field.name)
        problem = limits.problem(value) if limits else None
        if problem:
            raise ArgsOutOfLimits(f"{type(args).__name__}.{field.name}={value!r} is invalid: {problem}")
        for item in value if isinstance(value, list | tuple) else (value,):
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                check_limits(item)
