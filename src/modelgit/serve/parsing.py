"""Request bodies, read as untrusted input: strict JSON within a size limit, each field checked
for its type and range, every refusal a 400 naming the field (``param``).

Unknown fields are ignored (clients send ``user``, ``seed``... that change nothing here);
known fields with values this server does not support (``n`` > 1, ``logprobs``...) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FormatError
from .api_errors import bad_request

__all__ = ["parse_body", "Sampling", "sampling", "text_inputs", "messages", "stops",
           "optional_int", "flag", "model_name"]

_MAX_TEXT = 1_000_000  # characters of one prompt or input
_MAX_MESSAGES = 1024


def parse_body(data: bytes, max_bytes: int) -> dict:
    """The JSON object of a request body."""
    from ..untrusted import loads_json

    if len(data) > max_bytes:
        raise bad_request(f"the request body is {len(data)} bytes; the limit is {max_bytes}",
                          code="body_too_large")
    try:
        body = loads_json(data, "the request body", max_bytes, 32)
    except FormatError as exc:
        raise bad_request(str(exc), code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body is a JSON {type(body).__name__}; send an object "
                          "({\"model\": ..., ...})", code="invalid_json")
    return body


def _kind(value) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def model_name(body: dict) -> str:
    value = body.get("model")
    if isinstance(value, str) and len(value) > 256:
        raise bad_request(f"'model' has {len(value)} characters: no served name is that long",
                          "model", "invalid_value")
    if not isinstance(value, str) or not value:
        raise bad_request(f"'model' is {_kind(value)}: give the name of a served model as a "
                          "string (GET /v1/models lists them)", "model", "invalid_type")
    return value


def flag(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' is {_kind(value)} {value!r:.40}: give true or false", name,
                          "invalid_type")
    return value


def optional_int(body: dict, name: str, low: int, high: int) -> int | None:
    """An integer field in [low, high], or None when absent."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request(f"'{name}' is {_kind(value)} {value!r:.40}: give an integer", name,
                          "invalid_type")
    if not low <= value <= high:
        raise bad_request(f"'{name}' is {value}: give an integer from {low} to {high}", name,
                          "invalid_value")
    return value


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise bad_request(f"'{name}' is {_kind(value)}: give a number from {low} to {high}", name,
                          "invalid_type")
    if not low <= value <= high:
        raise bad_request(f"'{name}' is {value}: give a number from {low} to {high}", name,
                          "invalid_value")
    return float(value)


@dataclass(frozen=True)
class Sampling:
    """Decoding settings: greedy unless ``temperature`` > 0 (the default is greedy, unlike
    OpenAI's 1.0: a served release answers the same prompt the same way)."""

    temperature: float
    top_p: float

    @property
    def key(self) -> tuple:
        return (self.temperature, self.top_p)


def sampling(body: dict) -> Sampling:
    """Refuses what this server does not do (n > 1, logprobs, best_of, echo)."""
    for name, neutral in (("n", 1), ("best_of", 1), ("logprobs", None), ("echo", False),
                          ("top_logprobs", None), ("suffix", None), ("tools", None)):
        value = body.get(name)
        if value is not None and value != neutral and not (name == "logprobs" and value is False):
            raise bad_request(f"'{name}' = {value!r:.40} is not supported by this server "
                              f"(leave it out{'' if neutral is None else f' or give {neutral!r}'})",
                              name, "unsupported_parameter")
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if temperature > 0 and top_p == 0:
        raise bad_request("'top_p' is 0 with sampling: give a number above 0", "top_p",
                          "invalid_value")
    return Sampling(temperature, top_p)


def stops(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > 4 or not all(
            isinstance(s, str) and 0 < len(s) <= 256 for s in items):
        raise bad_request("'stop' must be a string or a list of up to 4 non-empty strings of at "
                          "most 256 characters", "stop", "invalid_type")
    return tuple(items)


def _text(value, what: str, param: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{what} is {_kind(value)}: give a string", param, "invalid_type")
    if len(value) > _MAX_TEXT:
        raise bad_request(f"{what} has {len(value)} characters; the limit is {_MAX_TEXT}", param,
                          "invalid_value")
    return value


def text_inputs(body: dict, name: str, limit: int) -> list[str]:
    """A string or a non-empty list of strings (``prompt``, ``input``)."""
    value = body.get(name)
    if value is None:
        raise bad_request(f"'{name}' is missing: give a string or a list of strings", name,
                          "missing_required_parameter")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise bad_request(f"'{name}' is {_kind(value)}: give a string or a non-empty list of "
                          "strings (token arrays are not accepted)", name, "invalid_type")
    if len(items) > limit:
        raise bad_request(f"'{name}' holds {len(items)} items; the limit is {limit}", name,
                          "invalid_value")
    return [_text(item, f"'{name}'[{i}]", name) for i, item in enumerate(items)]


def messages(body: dict) -> list[dict]:
    """Chat messages as ``[{"role", "content": str}]`` (content parts of type text are joined)."""
    value = body.get("messages")
    if not isinstance(value, list) or not value:
        raise bad_request(f"'messages' is {_kind(value)}: give a non-empty list of "
                          "{\"role\", \"content\"} objects", "messages", "invalid_type")
    if len(value) > _MAX_MESSAGES:
        raise bad_request(f"{len(value)} messages; the limit is {_MAX_MESSAGES}", "messages",
                          "invalid_value")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in (
                "system", "developer", "user", "assistant"):
            raise bad_request(f"messages[{i}] needs a role of system, developer, user or "
                              "assistant", "messages", "invalid_value")
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise bad_request(f"messages[{i}].content: only text parts are supported",
                                  "messages", "invalid_value")
            content = "".join(_text(p.get("text"), f"messages[{i}] text part", "messages")
                              for p in content)
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({"role": role, "content": _text(content, f"messages[{i}].content",
                                                   "messages")})
    return out
