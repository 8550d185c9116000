"""Recipe parameters: which names a method takes, checking the values a recipe gives, and
resolving them for one tensor, by mergekit's rules.

**Names.** A method's parameters are its per-model ``model_params`` (``weight``, ``density``...),
its global ``options`` (``t``, ``lambda``, ``normalize``...) and its per-model file parameters
(``fisher``). A per-model parameter may be set on a model (or slice source), on a slice, or in the
top-level ``parameters:`` (a default for every model); a global one only on a slice or at the top
level (mergekit does not read it on a model, so it is an error there rather than a silent no-op).
Any other name is an error that names the closest valid one.

**Values.** A scalar; a *gradient*, a list of scalars interpolated over the layers of a slice; or a
*conditional* ``{filter: SUBSTRING, value: V}``, alone or in a list, where the first entry whose
filter occurs in the tensor name (``*`` or no filter: every tensor) gives the value. Numbers
written as strings (YAML reads ``1e-3`` as a string) are numbers.

**Resolution** (:func:`resolve`), for one tensor at depth ``t`` in [0, 1]: the levels are tried
from the most specific (model, then slice, then top level); a level that does not set the name,
or whose filters all miss the tensor, passes to the next; then the method's default. A numeric
gradient ``[v0 ... vn]`` at ``t`` is ``(1 - f) v_i + f v_(i+1)`` with ``i + f = t n``; a gradient of
booleans or strings takes ``v_int(t n)``. ``t`` is ``i / (L - 1)`` for layer ``i`` of a slice of
``L`` layers (1 when ``L = 1``) and 0 for every tensor outside the layers (embeddings, final norm,
LM head), as in mergekit 0.1.5.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .base import MergeMethod

__all__ = ["ParamSpec", "method_params", "check_parameters", "evaluate", "resolve", "resolve_value",
           "layer_position", "layer_index", "closest", "parameter_summary"]

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block)\.(\d+)\.")
# options the engine fills in itself, never set by a recipe
_INTERNAL = {"fisher"}


@dataclass(frozen=True)
class ParamSpec:
    """One parameter a method takes."""
    name: str
    kind: str  # "float", "bool", "int" or "path"
    scope: str  # "model": per model (any level); "global": slice or top level only
    default: Any


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    return "float"


def method_params(method: MergeMethod) -> dict[str, ParamSpec]:
    """Every parameter ``method`` takes, by name."""
    specs = {name: ParamSpec(name, "float", "model", default) for name, default in method.model_params.items()}
    specs.update({name: ParamSpec(name, "path", "model", None) for name in method.model_files})
    for name, default in method.options.items():
        if name not in _INTERNAL:
            specs[name] = ParamSpec(name, _kind(default), "global", default)
    return specs


def closest(name: str, valid: Iterable[str]) -> str:
    """`` (did you mean `x`?)`` for the closest of ``valid``, or an empty string."""
    match = difflib.get_close_matches(str(name), sorted(valid), n=1, cutoff=0.6)
    return f" (did you mean `{match[0]}`?)" if match else ""


def parameter_summary(method: MergeMethod) -> str:
    """``"weight, density per model; lambda, normalize globally"``: what ``method`` takes."""
    specs = method_params(method).values()
    per_model = ", ".join(s.name for s in specs if s.scope == "model") or "none"
    shared = ", ".join(s.name for s in specs if s.scope == "global") or "none"
    return f"{method.name} takes {per_model} per model; {shared} globally"


def _check_leaf(where: str, value: Any, kind: str, problems: list[str]) -> None:
    if kind == "any":  # the method is unknown: only the shape of the value can be checked
        if not _scalar(value):
            problems.append(f"{where}: expected a number, true/false or a string, got {value!r}")
        return
    if kind == "path":
        if not isinstance(value, str) or not value:
            problems.append(f"{where}: expected a file path, got {value!r}")
        return
    if kind == "bool":
        if not isinstance(value, bool) and value not in (0, 1):
            problems.append(f"{where}: expected true or false, got {value!r}")
        return
    if isinstance(value, bool):
        problems.append(f"{where}: expected a number, got {value!r}")
        return
    try:
        number = float(value) if isinstance(value, (int, float, str)) else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number):
        problems.append(f"{where}: expected a finite number, got {value!r}")
    elif kind == "int" and number != int(number):
        problems.append(f"{where}: expected an integer, got {value!r}")


def _check_value(where: str, value: Any, kind: str, problems: list[str], depth: int = 0) -> None:
    """Structural and type check of one parameter's setting (module docstring)."""
    if isinstance(value, dict):
        value = [value]  # a single conditional
    if isinstance(value, list):
        if not value:
            problems.append(f"{where}: an empty list sets nothing; give a value")
        elif all(isinstance(v, dict) for v in value):
            if depth:
                problems.append(f"{where}: a filtered value cannot itself be filtered")
                return
            for i, item in enumerate(value):
                unknown = sorted(set(item) - {"filter", "value"})
                for key in unknown:
                    problems.append(f"{where}[{i}]: unknown key `{key}`{closest(key, ('filter', 'value'))}; "
                                    "a filtered entry has `filter` (optional) and `value`")
                if "value" not in item:
                    problems.append(f"{where}[{i}]: a filtered entry needs a `value`")
                elif not unknown:
                    _check_value(f"{where}[{i}].value", item["value"], kind, problems, depth + 1)
                if "filter" in item and not isinstance(item["filter"], str):
                    problems.append(f"{where}[{i}].filter: expected a substring of tensor names, "
                                    f"got {item['filter']!r}")
        elif any(isinstance(v, (dict, list)) for v in value):
            problems.append(f"{where}: expected a list of values (a gradient) or a list of "
                            f"{{filter, value}} entries, got {value!r}")
        else:
            for v in value:
                _check_leaf(where, v, kind, problems)
        return
    if value is None:
        problems.append(f"{where}: no value given")
        return
    _check_leaf(where, value, kind, problems)


def check_parameters(where: str, params: Any, method: MergeMethod | None, level: str, problems: list[str]) -> None:
    """Append a problem for each unknown name, misplaced global or malformed value.

    Args:
        where: the recipe path of the mapping, for messages (``models[1].parameters``).
        params: the mapping as read.
        method: the recipe's method (None when it is unknown: then only the values' shapes).
        level: ``"model"`` (a model or slice source), ``"slice"`` or ``"top"``.
        problems: where problems are appended.
    """
    if params is None:
        return
    if not isinstance(params, dict):
        problems.append(f"{where}: expected a mapping of parameter names to values, got {params!r}")
        return
    if method is None:
        for name, value in params.items():
            _check_value(f"{where}.{name}", value, "any", problems)
        return
    specs = method_params(method)
    for name, value in params.items():
        spec = specs.get(name)
        if spec is None:
            problems.append(f"{where}: unknown parameter `{name}` for {method.name}{closest(name, specs)}; "
                            f"{parameter_summary(method)}")
            continue
        if level == "model" and spec.scope == "global":
            problems.append(f"{where}: `{name}` is a global parameter of {method.name}: set it under the "
                            "top-level `parameters:` (or a slice's), not on one model (mergekit ignores it there)")
            continue
        if level != "model" and spec.kind == "path":
            problems.append(f"{where}: `{name}` names a file of one model: set it on each model")
            continue
        _check_value(f"{where}.{name}", value, spec.kind, problems)


def _convert(value: Any, kind: str) -> Any:
    if kind == "path":
        return value
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(float(value))
    return float(value)


def _scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def evaluate(setting: Any, tensor_name: str, t: float, kind: str | None = None) -> Any:
    """The value of one setting for ``tensor_name`` at depth ``t``; ``None`` when every filter
    misses it. ``kind`` converts the result (``None``: as written, numbers as floats)."""
    if isinstance(setting, dict):
        setting = [setting]
    if _scalar(setting):
        return setting if kind is None else _convert(setting, kind)
    if not isinstance(setting, list) or not setting:
        return None
    if all(_scalar(v) for v in setting):
        if kind in ("bool", "path") or any(isinstance(v, bool) for v in setting) or (
                kind is None and any(isinstance(v, str) for v in setting)):
            chosen = setting[int(t * (len(setting) - 1))]  # discrete values are picked, not blended
            return chosen if kind is None else _convert(chosen, kind)
        values = [float(v) for v in setting]
        scaled = t * (len(values) - 1)
        low = int(scaled)
        high = min(len(values) - 1, low + 1)
        frac = scaled - low
        result = (1 - frac) * values[low] + frac * values[high]
        return result if kind is None else _convert(result, kind)
    for item in setting:
        if not isinstance(item, dict):
            return None
        pattern = item.get("filter")
        if pattern is None or pattern == "*" or (isinstance(pattern, str) and tensor_name and pattern in tensor_name):
            return evaluate(item.get("value"), tensor_name, t, kind)
    return None


def resolve(spec: ParamSpec, levels: Iterable[Mapping | None], tensor_name: str, t: float) -> Any:
    """The value of ``spec`` for one tensor: the first level that sets it for this tensor, else
    the default (module docstring)."""
    for level in levels:
        if level and spec.name in level:
            value = evaluate(level[spec.name], tensor_name, t, spec.kind)
            if value is not None:
                return value
    return spec.default


def resolve_value(value: Any, name: str, position: float) -> Any:
    """The value of one setting for tensor ``name`` at depth ``position`` (numbers as floats),
    ``None`` when its filters miss the tensor."""
    return evaluate(value, name, position)


def layer_index(name: str) -> int | None:
    """The layer number in a tensor name (``model.layers.3.mlp...`` -> 3), or None."""
    match = _LAYER_RE.search(name)
    return int(match.group(1)) if match else None


def layer_position(name: str, num_layers: int) -> float:
    """Where tensor ``name`` of a model of ``num_layers`` layers sits, as mergekit's gradient ``t``:
    ``i / (num_layers - 1)`` for layer ``i`` (1.0 for a one-layer model), 0.0 outside the layers."""
    index = layer_index(name)
    if index is None:
        return 0.0
    return index / (num_layers - 1) if num_layers > 1 else 1.0
