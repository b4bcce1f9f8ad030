"""Limits of a setting, declared once on its dataclass field: a component's Args or the serving settings.

`soft_delete_retention_days: int = limited(90, ge=7, le=90)` is the only place the range is written: the
component checks it for every caller (`check_limits`, run by `package.from_inputs` at the top of each
component, so Python callers and other Pulumi languages alike), and the stack config section that embeds the
field gives the same bounds to pydantic (`Limits.pydantic_kwargs`), whose error names the YAML key. The
serving settings (inference/settings.py) give them to the server's command line as well, so this module is
plain Python: the inference image ships it without Pulumi.
"""

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

LIMITS = "limits"
"""Field metadata key holding the field's `Limits`."""


@dataclass(frozen=True)
class Limits:
    """Bounds of an argument: inclusive `ge`/`le` or exclusive `gt` for numbers, a regex `pattern` for strings
    (searched, as pydantic does: anchor it). None: no bound of that kind."""

    ge: int | float | None = None
    le: int | float | None = None
    gt: int | float | None = None
    pattern: str | None = None

    def problem(self, value: Any) -> str | None:
        """Why `value` is out of bounds, or None. Values not known yet (Outputs) are the engine's to check."""
        if isinstance(value, str) and self.pattern is not None:
            return None if re.search(self.pattern, value) else f"allowed: {self}"
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        if ((self.ge is not None and value < self.ge) or (self.le is not None and value > self.le)
                or (self.gt is not None and value <= self.gt)):
            return f"allowed: {self}"
        return None

    def pydantic_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in (("ge", self.ge), ("le", self.le), ("gt", self.gt), ("pattern", self.pattern))
                if v is not None}

    def __str__(self) -> str:
        if self.pattern is not None:
            return f"matches {self.pattern}"
        low = f">= {self.ge}" if self.ge is not None else f"> {self.gt}" if self.gt is not None else None
        high = f"<= {self.le}" if self.le is not None else None
        return " and ".join(part for part in (low, high) if part)


def limited(default: Any = dataclasses.MISSING, *, ge: int | float | None = None, le: int | float | None = None,
            gt: int | float | None = None, pattern: str | None = None, **field_kwargs: Any) -> Any:
    """A dataclass field with bounds (and the default, if any)."""
    limits = Limits(ge=ge, le=le, gt=gt, pattern=pattern)
    return dataclasses.field(default=default, metadata={LIMITS: limits}, **field_kwargs)


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
