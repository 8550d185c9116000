"""Parsing what strangers send: strict JSON with limits, finite numbers, printable text.

Every file a contributor, a client or a downloaded checkpoint supplies (``adapter_config.json``,
the metadata of ``modelgit train``, ``contribution.json``, a safetensors header, a manifest's
options) is parsed here, never with a bare ``json.loads``:

* the size is checked before anything is decoded;
* the nesting depth is measured *before* parsing, by a scan that does not recurse, so a
  document of 100,000 opening brackets is an error with a message, not a ``RecursionError``;
* ``NaN``, ``Infinity`` and numbers that overflow a float (``1e400``) are refused: Python's
  ``json`` accepts them, and one NaN turns every comparison of a policy into "false";
* duplicate keys are refused (which of two values a reader keeps differs between parsers).

Values are then checked with :func:`number_problem` and :func:`text_problem`, which return a
message (or None) so that a validator can report every problem at once.
"""

from __future__ import annotations

import json
import math
import re

from .errors import FormatError

__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "json_depth", "loads_json", "load_json_file",
           "number_problem", "text_problem", "dumps_json"]

#: default size limit of one untrusted JSON document (callers pass their own, smaller ones)
MAX_JSON_BYTES = 16 * 1024 * 1024
#: default nesting limit: the deepest legitimate file modelgit reads nests 4 levels
MAX_JSON_DEPTH = 32

# a JSON string (escapes included), written so that the regex engine never backtracks
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = bytes(range(256)).translate(None, b"[]{}")  # every byte but the brackets


def json_depth(data: bytes, stop_above: int | None = None) -> int:
    """The deepest nesting of ``[``/``{`` in ``data`` (strings skipped), computed without
    recursion in C-speed passes: strings are cut out by a regex, everything but brackets is
    deleted, and the running depth is a cumulative sum taken a block at a time (memory stays
    small for a 100 MB header). With ``stop_above`` it returns as soon as the depth exceeds it."""
    import numpy as np

    brackets = _STRING.sub(b"", data).translate(None, _BRACKETS)
    codes = np.frombuffer(brackets, dtype=np.uint8)
    deepest, depth = 0, 0
    for start in range(0, len(codes), _BLOCK):
        block = codes[start:start + _BLOCK]
        steps = (block == ord("[")) | (block == ord("{"))  # +1 for an opener, -1 for a closer
        running = np.cumsum(steps.astype(np.int32) * 2 - 1, dtype=np.int64) + depth
        deepest, depth = max(deepest, int(running.max())), int(running[-1])
        if stop_above is not None and deepest > stop_above:
            break
    return deepest


_BLOCK = 1 << 20


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows (NaN and Infinity are refused)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} overflows a float")
    return value


def _unique_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def loads_json(data: bytes | str, where: str, max_bytes: int = MAX_JSON_BYTES,
               max_depth: int = MAX_JSON_DEPTH):
    """Parse untrusted JSON.

    Args:
        data: the document (UTF-8 bytes or text).
        where: what it is, for messages (a file name, ``REV:PATH``...).
        max_bytes, max_depth: limits; the document is refused beyond them.
    Returns:
        The parsed value: dicts, lists, str, int, finite float, bool, None.
    Raises:
        FormatError: too large, nested too deep, not UTF-8, not JSON, a non-finite number or a
            duplicate key, naming ``where`` and the limit or the position.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise FormatError(f"{where}: {len(raw)} bytes, over the limit of {max_bytes} bytes for "
                          "this file")
    if json_depth(raw, stop_above=max_depth) > max_depth:
        raise FormatError(f"{where}: JSON nested more than {max_depth} levels deep: this file "
                          "never needs that, so it is refused")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys)
    except RecursionError:  # unreachable after the depth check; kept as a second guard
        raise FormatError(f"{where}: JSON nested too deep") from None
    except ValueError as exc:
        raise FormatError(f"{where}: not valid JSON ({exc})") from None


def load_json_file(path: str, where: str | None = None, max_bytes: int = MAX_JSON_BYTES,
                   max_depth: int = MAX_JSON_DEPTH):
    """:func:`loads_json` of a file, whose size is checked before it is read.

    Raises:
        FormatError: see :func:`loads_json`; also when the file cannot be read.
    """
    import os

    where = where or path
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise FormatError(f"{where}: {size} bytes, over the limit of {max_bytes} bytes "
                                  "for this file")
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise FormatError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    return loads_json(data, where, max_bytes, max_depth)


def number_problem(value, what: str, minimum: float | None = None, maximum: float | None = None,
                   integer: bool = False, above_minimum: bool = False,
                   below_maximum: bool = False) -> str | None:
    """None when ``value`` is a finite number (an int when ``integer``) within the bounds,
    else a message naming ``what``, the value and the allowed range. Booleans are not numbers.

    Args:
        above_minimum / below_maximum: the bound itself is excluded.
    """
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not isinstance(value, int)):
        return f"{what} is {_show(value)}, not {kind}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{what} is {value}, not a finite number"
    low = minimum is not None and (value <= minimum if above_minimum else value < minimum)
    high = maximum is not None and (value >= maximum if below_maximum else value > maximum)
    if low or high:  # (ints are compared exactly: 10**400 is out of range, not an overflow)
        left = "(-inf" if minimum is None else f"{'(' if above_minimum else '['}{minimum:g}"
        right = "inf)" if maximum is None else f"{maximum:g}{')' if below_maximum else ']'}"
        return f"{what} is {_show(value)}, outside the allowed range {left}, {right}"
    return None


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def text_problem(value, what: str, max_length: int, multiline: bool = False) -> str | None:
    """None when ``value`` is a string of at most ``max_length`` characters without control
    characters (terminal escapes, bidirectional overrides; newlines and tabs only when
    ``multiline``), else a message: such text is shown to maintainers and written into commits."""
    if not isinstance(value, str):
        return f"{what} is {_show(value)}, not a string"
    if len(value) > max_length:
        return f"{what} has {len(value)} characters, over the limit of {max_length}"
    if _CONTROL.search(value) or (not multiline and ("\n" in value or "\t" in value)):
        return f"{what} holds control characters (terminal escapes, {'' if multiline else 'newlines, '}" \
               "direction overrides): write plain text"
    return None


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def dumps_json(value, indent: int | None = 2) -> str:
    """Canonical JSON of a record modelgit writes (sorted keys, a final newline); a NaN or an
    infinity is a ValueError, never written (a reader would refuse the file)."""
    return json.dumps(value, indent=indent, sort_keys=True, allow_nan=False) + "\n"
