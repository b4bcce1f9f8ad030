"""decode_object's limits at their boundaries, called directly (the HTTP-level cases are in test_hostile_input.py;
these are fast enough to run under mutation testing)."""

from __future__ import annotations

import json

import pytest

from inference.errors import APIError
from inference.json_body import MAX_DEPTH, MAX_INT_DIGITS, MAX_QUOTED_CHARS, decode_object, quote


def refused(body: bytes | str) -> APIError:
    with pytest.raises(APIError) as excinfo:
        decode_object(body.encode() if isinstance(body, str) else body)
    assert excinfo.value.status == 400
    return excinfo.value


def test_the_limits_are_what_the_module_documents() -> None:
    assert (MAX_DEPTH, MAX_INT_DIGITS, MAX_QUOTED_CHARS) == (64, 64, 32)


@pytest.mark.parametrize("kind", ["[", '{"a":'])
def test_nesting_of_exactly_max_depth_levels_passes_and_one_more_is_refused(kind: str) -> None:
    close = "]" if kind == "[" else "}"
    def nested(levels: int) -> str:  # the outer object is level 1
        return '{"x":' + kind * (levels - 1) + "1" + close * (levels - 1) + "}"

    assert decode_object(nested(MAX_DEPTH).encode())
    error = refused(nested(MAX_DEPTH + 1))
    assert error.code == "invalid_json" and "at most 64 levels" in error.message


def test_nesting_past_the_recursion_limit_is_the_same_400() -> None:
    error = refused('{"x":' + "[" * 100_000 + "]" * 100_000 + "}")
    assert error.code == "invalid_json" and "nested too deeply" in error.message


@pytest.mark.parametrize("sign", ["", "-"])
def test_integers_of_max_digits_pass_and_one_more_digit_is_refused_naming_the_field(sign: str) -> None:
    at_limit = sign + "9" * MAX_INT_DIGITS
    assert decode_object(f'{{"seed": {at_limit}}}'.encode()) == {"seed": int(at_limit)}
    error = refused(f'{{"a": [1, {{"seed": {sign}{"9" * (MAX_INT_DIGITS + 1)}}}]}}')
    assert error.code == "invalid_parameter"
    assert error.message == "a.1.seed: integer with 65 digits is out of range (no field accepts more than 64 digits)"


def test_a_long_digit_run_inside_a_string_or_a_float_is_not_an_integer() -> None:
    digits = "1" * (MAX_INT_DIGITS + 10)
    assert decode_object(f'{{"s": "{digits}", "f": 0.{digits}}}'.encode())["s"] == digits


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_numbers_are_refused(constant: str) -> None:
    error = refused(f'{{"temperature": {constant}}}')
    assert error.code == "invalid_json" and error.message.endswith(f"{constant} is not a JSON number.")


@pytest.mark.parametrize("body", ["[]", "1", '"x"', "null"])
def test_only_an_object_is_a_request_body(body: str) -> None:
    assert refused(body).message == "Request body must be a JSON object."


def test_invalid_utf8_and_invalid_json_are_refused() -> None:
    assert refused(b'{"a": "\xff"}').message == "Request body is not valid UTF-8 (byte 7)."
    assert refused("{").message.startswith("Request body is not valid JSON: ")


@pytest.mark.parametrize(("body", "where"), [
    ('{"prompt": "a\\ud800"}', "prompt"),
    ('{"messages": [{"content": "\\udfff"}]}', "messages.0.content"),
    ('{"\\ud800": 1}', "body"),
])
def test_lone_surrogates_are_refused_naming_the_field(body: str, where: str) -> None:
    error = refused(body)
    assert error.code == "invalid_unicode" and error.message.startswith(f"{where}: contains a lone UTF-16 surrogate")


def test_raw_surrogate_bytes_get_the_same_error_as_the_escape() -> None:
    error = refused(b'{"prompt": "a\xed\xa0\x80"}')
    assert error.message.startswith("prompt: contains a lone UTF-16 surrogate (U+D800 at character 1)")


def test_paired_surrogates_and_other_unicode_pass() -> None:
    assert decode_object(json.dumps({"p": "\U0001f600 é"}).encode()) == {"p": "\U0001f600 é"}


def test_quote_cuts_at_the_limit() -> None:
    assert quote("x" * MAX_QUOTED_CHARS) == "x" * 32
    assert quote("x" * (MAX_QUOTED_CHARS + 1)) == "x" * 32 + "... (33 characters)"
    assert quote(10 ** 31) == str(10 ** 31)  # 32 digits
    assert quote(-(10 ** 40)) == "-10000000000... (41 digits)"
    assert quote(True) == "True" and quote(None) == "None"


def test_integers_up_to_the_limit_decode_when_a_long_digit_run_elsewhere_turns_the_integer_check_on() -> None:
    run = "7" * (MAX_INT_DIGITS + 1)  # in a string: not an integer, but it makes the decoder check every integer
    at_limit = int("9" * MAX_INT_DIGITS)
    assert decode_object(f'{{"s": "{run}", "seed": {at_limit}, "n": -3}}'.encode()) == {
        "s": run, "seed": at_limit, "n": -3}


def test_the_depth_error_says_what_is_allowed() -> None:
    assert refused("[" * 70 + "]" * 70).message == "Request body must be a JSON object."
    assert refused('{"x":' + "[" * 70 + "]" * 70 + "}").message == (
        "Request body is nested too deeply; at most 64 levels of arrays and objects are allowed.")
