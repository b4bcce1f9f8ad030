"""Decode a request body into a JSON object that is safe to validate, or a 400 naming the problem.

`json.loads` accepts things no API field can use and that break later stages with a 500:

* lone UTF-16 surrogates, as a `\\ud800` escape or as raw bytes ED A0 80 (which `json.loads`
  decodes with `surrogatepass`): the Rust tokenizer and UTF-8 encoders reject them;
* nesting deep enough to exhaust the recursion limit (a RecursionError out of `json.loads`, or out
  of whatever walks the value later);
* integers with thousands of digits: CPython refuses to convert more than 4,300 digits between int
  and str (a ValueError out of `json.loads`, or out of any error message that prints one);
* `NaN` / `Infinity`, which are not JSON (RFC 8259) though Python's decoder takes them.

`decode_object` rejects each of these with a 400 whose message names the field (as a dotted path,
the same form pydantic's errors use) and never quotes the offending value.
"""

from __future__ import annotations

import json
import re
from typing import Any

from . import errors

# No API field nests deeper than a JSON schema inside a tool definition; 64 levels is far beyond
# any real one, and far below the recursion limit of anything that walks the value afterwards.
MAX_DEPTH = 64
# No API field takes an integer beyond 64 bits (20 digits); longer digit runs are refused while
# decoding, before CPython's own 4,300-digit limit can turn them into a ValueError.
MAX_INT_DIGITS = 64
_LONG_DIGIT_RUN = re.compile(rb"\d{%d,}" % (MAX_INT_DIGITS + 1))
# Values quoted in error messages are cut to this many characters.
MAX_QUOTED_CHARS = 32


class _OversizedInt:
    """Stands in for an integer literal with more than MAX_INT_DIGITS digits until its path is known."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _parse_int(text: str) -> int | _OversizedInt:
    digits = len(text) - (text[0] == "-")
    return _OversizedInt(digits) if digits > MAX_INT_DIGITS else int(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def quote(value: object) -> str:
    """`value` for an error message, cut to MAX_QUOTED_CHARS (digits counted when cut)."""
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)  # callers only hold ints of at most MAX_INT_DIGITS digits
        if len(text) > MAX_QUOTED_CHARS:
            return f"{text[:12]}... ({len(text.lstrip('-'))} digits)"
        return text
    text = value if isinstance(value, str) else repr(value)
    if len(text) > MAX_QUOTED_CHARS:
        return f"{text[:MAX_QUOTED_CHARS]}... ({len(text)} characters)"
    return text


def _path(parts: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in parts) or "body"


def _check_text(text: str, where: tuple[str | int, ...]) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise errors.bad_request(
            f"{_path(where)}: contains a lone UTF-16 surrogate (U+{ord(text[exc.start]):04X} at character "
            f"{exc.start}); strings must be valid Unicode (surrogates only in escaped pairs)",
            code="invalid_unicode",
        ) from None


def _check_value(root: Any) -> None:
    """Walk the decoded value iteratively (no recursion): depth, surrogates and oversized integers."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(root, ())]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, dict | list):
            if len(where) >= MAX_DEPTH:
                raise _too_deep()
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_text(key, where)
                    if not isinstance(item, int | float | bool | None):
                        stack.append((item, (*where, key)))
            else:
                # Token-id lists can hold a million ints: only push what needs a look.
                for index, item in enumerate(value):
                    if not isinstance(item, int | float | bool | None):
                        stack.append((item, (*where, index)))
        elif isinstance(value, _OversizedInt):
            raise errors.bad_request(
                f"{_path(where)}: integer with {value.digits} digits is out of range "
                f"(no field accepts more than {MAX_INT_DIGITS} digits)",
                code="invalid_parameter",
            )


def _too_deep() -> errors.APIError:
    return errors.bad_request(f"Request body is nested too deeply; at most {MAX_DEPTH} levels of arrays "
                              "and objects are allowed.", code="invalid_json")


def decode_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, checked as the module docstring says; else a 400."""
    # Decoding as json.loads does for bytes (UTF-8 with surrogatepass), so raw surrogate bytes reach
    # the walk and get the same field-naming error as the escaped form.
    try:
        text = body.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise errors.bad_request(f"Request body is not valid UTF-8 (byte {exc.start}).",
                                 code="invalid_json") from None
    # The int hook costs a Python call per integer: only bodies with a long digit run need it.
    parse_int = _parse_int if _LONG_DIGIT_RUN.search(body) else None
    try:
        data = json.loads(text, parse_int=parse_int, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise errors.bad_request(f"Request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:  # from _reject_constant
        raise errors.bad_request(f"Request body is not valid JSON: {exc} is not a JSON number.",
                                 code="invalid_json") from None
    if not isinstance(data, dict):
        raise errors.bad_request("Request body must be a JSON object.", code="invalid_json")
    _check_value(data)
    return data
