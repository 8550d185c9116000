"""Merge recipes in mergekit's YAML schema, loaded into a typed, frozen form.

Supported keys (a mergekit config for a method both tools share runs unchanged):

    merge_method: ties                # any name in modelgit.merge.METHODS
    base_model: path | PATH@REV | BASE+ADAPTER
    models:                            # or `slices:` with `sources:` and `layer_range`
      - model: path
        parameters: {weight: 0.5, density: [0.2, 0.8]}   # scalar, gradient, or filtered list
    parameters: {normalize: true, lambda: 1.0}           # method options; defaults for models
    dtype: float16 | bfloat16 | float32                   # output dtype (default: the base's)
    out_dtype: ...                                       # same as dtype (mergekit alias)
    seed: 0                                              # modelgit: seed of random methods

A parameter value is a scalar; a *gradient* (a list of numbers interpolated over the layers,
first value at the first layer, last at the last); or a list of ``{filter: SUBSTRING, value: V}``
entries where the first entry whose filter occurs in the tensor name applies and an entry without
a filter is the fallback. Tensors outside numbered layers take a gradient's first value
(embeddings) or last value (everything after the layers: final norm, LM head).

Validation reports every problem at once. Keys mergekit knows but modelgit does not implement
(``tokenizer_source``, ``chat_template``...) are reported as warnings and ignored; unknown keys
are errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import UsageError

__all__ = ["Recipe", "ModelEntry", "load_recipe", "parse_recipe", "resolve_value", "layer_position"]

DTYPE_NAMES = {"float16": "F16", "fp16": "F16", "half": "F16", "bfloat16": "BF16", "bf16": "BF16",
               "float32": "F32", "fp32": "F32", "float": "F32", "float64": "F64"}
_IGNORED = {"tokenizer_source", "tokenizer", "chat_template", "name", "architecture", "modules"}
_TOP_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
             "seed", *_IGNORED}


@dataclass(frozen=True)
class ModelEntry:
    model: str
    parameters: dict[str, Any] = field(default_factory=dict)
    layer_range: tuple[int, int] | None = None


@dataclass(frozen=True)
class Slice:
    sources: tuple[ModelEntry, ...]


@dataclass(frozen=True)
class Recipe:
    merge_method: str
    base_model: str | None
    models: tuple[ModelEntry, ...]
    parameters: dict[str, Any]
    dtype: str | None
    seed: int
    slices: tuple[Slice, ...] = ()
    warnings: tuple[str, ...] = ()
    text: str = ""  # the YAML as given, recorded with every output


def _check_value(where: str, value, problems: list[str]) -> None:
    if isinstance(value, bool) or isinstance(value, (int, float, str)) or value is None:
        return
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in value):
        return
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        for item in value:
            extra = set(item) - {"filter", "value"}
            if "value" not in item or extra:
                problems.append(f"{where}: a filtered entry needs `value` (and optionally `filter`), "
                                f"got keys {sorted(item)}")
            else:
                _check_value(where, item["value"], problems)
        return
    problems.append(f"{where}: expected a number, a list of numbers or a list of "
                    f"{{filter, value}} entries, got {value!r}")


def _model_entry(where: str, item, problems: list[str]) -> ModelEntry | None:
    if isinstance(item, str):
        return ModelEntry(item)
    if not isinstance(item, dict) or "model" not in item:
        problems.append(f"{where}: each model needs a `model:` key")
        return None
    unknown = set(item) - {"model", "parameters", "layer_range"}
    if unknown:
        problems.append(f"{where}: unknown keys {sorted(unknown)}")
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        problems.append(f"{where}.parameters: expected a mapping")
        params = {}
    for key, value in params.items():
        _check_value(f"{where}.parameters.{key}", value, problems)
    layer_range = item.get("layer_range")
    if layer_range is not None and (not isinstance(layer_range, list) or len(layer_range) != 2):
        problems.append(f"{where}.layer_range: expected [start, end]")
        layer_range = None
    return ModelEntry(str(item["model"]), dict(params), tuple(layer_range) if layer_range else None)


def parse_recipe(data: dict, text: str = "") -> Recipe:
    """Validate a recipe mapping and return it typed. Raises UsageError listing every problem."""
    from .methods import METHODS  # registers every method

    problems: list[str] = []
    if not isinstance(data, dict):
        raise UsageError("a merge recipe must be a YAML mapping")
    warnings = tuple(f"`{key}` is not supported by modelgit and is ignored" for key in data if key in _IGNORED)
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(f"unknown key `{key}`")
    method = data.get("merge_method")
    if method not in METHODS:
        problems.append(f"merge_method {method!r} is not one of: {', '.join(sorted(METHODS))}")
    models: list[ModelEntry] = []
    for i, item in enumerate(data.get("models") or []):
        entry = _model_entry(f"models[{i}]", item, problems)
        if entry:
            models.append(entry)
    slices: list[Slice] = []
    for i, item in enumerate(data.get("slices") or []):
        sources = [_model_entry(f"slices[{i}].sources[{j}]", s, problems)
                   for j, s in enumerate((item or {}).get("sources") or [])]
        slices.append(Slice(tuple(s for s in sources if s)))
    if not models and not slices:
        problems.append("the recipe names no models (`models:` or `slices:`)")
    if models and slices:
        problems.append("`models:` and `slices:` are mutually exclusive")
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        problems.append("parameters: expected a mapping")
        params = {}
    for key, value in params.items():
        _check_value(f"parameters.{key}", value, problems)
    dtype_name = data.get("out_dtype") or data.get("dtype")
    dtype = None
    if dtype_name is not None:
        dtype = DTYPE_NAMES.get(str(dtype_name).lower())
        if dtype is None:
            problems.append(f"dtype {dtype_name!r} is not one of {sorted(DTYPE_NAMES)}")
    base = data.get("base_model")
    if method in METHODS and METHODS[method].needs_base and not base:
        problems.append(f"merge_method {method} needs a base_model")
    seed = data.get("seed", 0)
    if not isinstance(seed, int):
        problems.append(f"seed must be an integer, not {seed!r}")
    if problems:
        raise UsageError("invalid merge recipe:\n  " + "\n  ".join(problems))
    return Recipe(method, str(base) if base else None, tuple(models), dict(params), dtype, seed,
                  tuple(slices), warnings, text)


def load_recipe(path: str) -> Recipe:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read recipe {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {exc}") from None
    return parse_recipe(data, text)


_LAYER_RE = re.compile(r"\.(?:layers|h|layer|blocks|block)\.(\d+)\.")


def layer_position(name: str, num_layers: int) -> float:
    """Where a tensor sits in the depth of the model, from 0 (first layer) to 1 (last)."""
    match = _LAYER_RE.search("." + name)
    if match is None:
        return 0.0 if "embed" in name or "wte" in name or "wpe" in name else 1.0
    index = int(match.group(1))
    return index / max(1, num_layers - 1)


def _gradient(values: list[float], position: float) -> float:
    if len(values) == 1:
        return float(values[0])
    x = position * (len(values) - 1)
    low = min(int(x), len(values) - 2)
    frac = x - low
    return float(values[low] * (1 - frac) + values[low + 1] * frac)


def resolve_value(value, name: str, position: float):
    """The value of a recipe parameter for tensor ``name`` at depth ``position``."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        for item in value:
            if "filter" not in item or item["filter"] in name:
                return resolve_value(item["value"], name, position)
        return None
    if isinstance(value, list):
        return _gradient(value, position)
    return value
