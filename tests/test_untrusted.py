"""The strict loader of untrusted JSON and the checks of numbers and text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from modelgit.errors import FormatError
from modelgit.untrusted import (dumps_json, json_depth, load_json_file, loads_json, number_problem,
                                text_problem)

_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.text(alphabet='[]{}"\\ab,:\x01é', max_size=8))
_VALUES = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(alphabet='[{"\\k', max_size=4), inner, max_size=4)),
    max_leaves=30)


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(_VALUES)
def test_json_depth_is_the_nesting_whatever_the_strings_hold(value):
    text = json.dumps(value)
    assert json_depth(text.encode()) == _depth(value)
    assert json_depth(json.dumps(value, ensure_ascii=False).encode()) == _depth(value)
    assert loads_json(text, "x", max_depth=max(_depth(value), 1)) == value


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_value_or_a_format_error(data):
    try:
        loads_json(data, "x", max_depth=4)
    except FormatError:
        pass


@pytest.mark.parametrize("text,fragment", [
    ("NaN", "NaN"), ('{"a": Infinity}', "Infinity"), ("[-Infinity]", "-Infinity"),
    ("1e400", "overflows"), ("-1e400", "overflows"), ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ("[" * 100_000, "nested more than 32"), ('{"a":' * 40 + "1" + "}" * 40, "nested more than 32"),
    ("{nope", "not valid JSON"), ("", "not valid JSON"), ("1" * 5000, "not valid JSON"),
])
def test_what_python_json_accepts_but_a_strict_reader_refuses(text, fragment):
    with pytest.raises(FormatError, match="^where: ") as info:
        loads_json(text, "where")
    assert fragment in str(info.value)


def test_size_and_encoding_limits(tmp_path):
    with pytest.raises(FormatError, match="over the limit of 10 bytes"):
        loads_json(b'"' + b"x" * 20 + b'"', "x", max_bytes=10)
    with pytest.raises(FormatError, match="not UTF-8"):
        loads_json(b'"\xff"', "x")
    path = tmp_path / "big.json"
    path.write_bytes(b"[" + b"1," * 100 + b"1]")
    with pytest.raises(FormatError, match="over the limit"):
        load_json_file(str(path), max_bytes=50)
    with pytest.raises(FormatError, match="cannot be read"):
        load_json_file(str(tmp_path / "absent.json"))
    assert loads_json('{"a": [1, 2.5, "[{", null, true]}', "x") == {"a": [1, 2.5, "[{", None, True]}


def test_a_100_megabyte_bracket_bomb_is_measured_in_bounded_steps():
    assert json_depth(b"[" * 10_000_000, stop_above=32) > 32
    assert json_depth(b"[]" * 5_000_000) == 1


@pytest.mark.parametrize("value,kwargs,expected", [
    (3, {"minimum": 1, "maximum": 64, "integer": True}, None),
    (float("nan"), {}, "x is nan, not a finite number"),
    (float("inf"), {"minimum": 0}, "x is inf, not a finite number"),
    (-1e30, {"minimum": 0, "above_minimum": True}, "x is -1e+30, outside the allowed range (0, inf)"),
    (10**400, {"maximum": 64, "integer": True}, "outside the allowed range (-inf, 64]"),
    (True, {}, "x is True, not a number"), ("2", {}, "x is '2', not a number"),
    (2.0, {"integer": True}, "x is 2.0, not an integer"),
    (1.0, {"minimum": 0, "maximum": 1, "below_maximum": True}, "outside the allowed range [0, 1)"),
])
def test_number_problem(value, kwargs, expected):
    problem = number_problem(value, "x", **kwargs)
    assert problem == expected if expected is None else expected in problem


def test_text_problem():
    assert text_problem("Ada Lovelace <ada@example.org>", "author", 100) is None
    assert "control characters" in text_problem("a\x1b[2Jb", "author", 100)
    assert "control characters" in text_problem("evil\u202etxt.exe", "author", 100)
    assert "control characters" in text_problem("two\nlines", "author", 100)
    assert text_problem("two\nlines", "message", 100, multiline=True) is None
    assert "over the limit of 3" in text_problem("four", "x", 3)
    assert "not a string" in text_problem(None, "x", 3)


def test_records_are_never_written_with_nan():
    assert dumps_json({"b": 1, "a": [0.5]}) == '{\n  "a": [\n    0.5\n  ],\n  "b": 1\n}\n'
    with pytest.raises(ValueError):
        dumps_json({"score": float("nan")})
