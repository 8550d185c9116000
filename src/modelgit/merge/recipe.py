"""Merge recipes in mergekit's YAML schema, checked as a whole and loaded into a typed, frozen form.

A mergekit config for a method both tools share runs unchanged and gives mergekit's result
(``tests/merge/test_mergekit_parity.py`` runs mergekit's example configs against its pinned
output)::

    merge_method: ties                # any name in modelgit.merge.METHODS
    base_model: path | PATH@REV | BASE+ADAPTER
    models:                           # or `slices:` (below)
      - model: path
        parameters: {weight: 0.5, density: [0.2, 0.8]}   # scalar, gradient, or filtered list
    parameters: {normalize: true, lambda: 1.0}           # method options; defaults for models
    dtype: float16 | bfloat16 | float32                   # output dtype (default: the inputs')
    out_dtype: ...                                       # output dtype, when both are given
    tokenizer_source: base | union | MODEL               # or tokenizer: {source: ...}
    name: first-merge                                    # a label (mergekit-multi's)
    seed: 0                                              # modelgit: seed of random methods
    heads: average | keep                                # modelgit: task heads of classifier
                                                         # adapters (see merge.task_heads)

    slices:                            # layer ranges of models, merged slice by slice and stacked
      - sources:
          - {model: a, layer_range: [0, 16], parameters: {...}}
          - {model: b, layer_range: [0, 16]}
        parameters: {...}              # for this slice (between a source's and the top level's)
        base_model: a                  # for this slice

Parameter values and their resolution per tensor are :mod:`modelgit.merge.parameters`'s.

**The base among the models.** As in mergekit, a method that takes the base as its reference
(SLERP, the task-arithmetic family, Model Stock) treats a ``base_model`` listed among ``models``
as the base, never as one more model (its parameters are unused: a warning says so); a method that
has no use for a base (linear, passthrough, fisher) merges it as one more model, adding it after
the listed ones when it is not among them (a warning says so).

**Strict keys.** Every key is checked: an unknown key, model key or parameter is an error naming
the closest valid one, and every problem is reported at once. Keys of mergekit that modelgit
does not implement are refused with a message naming them, never ignored: ``chat_template``,
``modules``, ``tokenizer.tokens`` and ``tokenizer.pad_to_multiple_of``, a slice's
``residual_weight``, ``layer_range`` on a ``models:`` entry, and several YAML documents in one
file (mergekit-multi). ``tokenizer_source`` is supported where mergekit's vocabulary alignment is
the identity: the engine checks that every input has the same vocabulary, else refuses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import UsageError
from .base import MergeMethod
from .task_heads import HEAD_RULES
from .parameters import check_parameters, closest, layer_position, resolve_value

__all__ = ["Recipe", "ModelEntry", "Slice", "load_recipe", "parse_recipe", "resolve_value", "layer_position",
           "same_model", "model_inputs", "DTYPE_NAMES"]

DTYPE_NAMES = {"float16": "F16", "fp16": "F16", "half": "F16", "bfloat16": "BF16", "bf16": "BF16",
               "float32": "F32", "fp32": "F32", "float": "F32", "float64": "F64"}
_TOP_KEYS = ("merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype", "seed",
             "name", "tokenizer_source", "tokenizer", "heads")
_REFUSED_TOP = {
    "chat_template": "modelgit copies the tokenizer files of the base as they are; set the template "
                     "in the output's tokenizer_config.json",
    "modules": "per-module recipes (mergekit's multi-module models) are not implemented; use "
               "`models:` or `slices:`",
    "out_path": "that is a mergekit-mega key; give the output with `modelgit merge RECIPE -o OUT`",
}
_MODEL_KEYS = ("model", "parameters")
_SOURCE_KEYS = ("model", "layer_range", "parameters")
_SLICE_KEYS = ("sources", "parameters", "base_model")
_TOKENIZER_KEYS = ("source", "tokens", "pad_to_multiple_of")
# mergekit methods modelgit does not implement (mergekit 0.1.5's registry)
_MERGEKIT_ONLY = ("arcee_fusion", "karcher", "multislerp", "nearswap", "nuslerp", "ram", "ramplus_tl", "sce")
# parameters a method takes, as mergekit does, without their changing its result
_NO_EFFECT = {("task_arithmetic", "density"): "task_arithmetic drops nothing (mergekit ignores density "
                                               "there too); use ties, dare_linear or breadcrumbs to sparsify"}


@dataclass(frozen=True)
class ModelEntry:
    model: str
    parameters: dict[str, Any] = field(default_factory=dict)
    layer_range: tuple[int, int] | None = None  # slices' sources only


@dataclass(frozen=True)
class Slice:
    sources: tuple[ModelEntry, ...]
    parameters: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None  # this slice's base (default: the recipe's)


@dataclass(frozen=True)
class Recipe:
    merge_method: str
    base_model: str | None
    models: tuple[ModelEntry, ...]
    parameters: dict[str, Any]
    dtype: str | None  # output dtype name (F16...), None: each tensor keeps its input dtype
    seed: int
    slices: tuple[Slice, ...] = ()
    warnings: tuple[str, ...] = ()
    text: str = ""  # the YAML as given, recorded with every output
    name: str | None = None
    tokenizer_source: str | None = None  # base, union or a model; None: the base's files, copied
    heads: str | None = None  # task heads: average | keep; None: average when the classes agree


def same_model(a: str, b: str) -> bool:
    """Whether two specs name the same model (``base`` and ``./base/`` do)."""
    return os.path.normpath(a) == os.path.normpath(b)


def model_inputs(method: MergeMethod, base: str | None, entries: tuple[ModelEntry, ...]) -> list[ModelEntry]:
    """The models ``method`` merges, from a recipe's ``models:`` and ``base_model`` (module
    docstring): without a listed base for a method that takes the base as its reference; with the
    base added at the end for one that merges it as a model, when it is not listed."""
    if not base:
        return list(entries)
    listed = any(same_model(e.model, base) for e in entries)
    if method.base_is_input:
        return list(entries) if listed else [*entries, ModelEntry(base)]
    return [e for e in entries if not same_model(e.model, base)]


def _unknown(where: str, keys, valid, problems: list[str], refused: dict[str, str] | None = None) -> None:
    for key in keys:
        if refused and key in refused:
            problems.append(f"{where}`{key}` is not supported by modelgit: {refused[key]}")
        elif key not in valid:
            problems.append(f"{where}unknown key `{key}`{closest(key, valid)}; valid keys: {', '.join(valid)}")


def _entry(where: str, item, method: MergeMethod | None, problems: list[str], in_slice: bool) -> ModelEntry | None:
    if isinstance(item, str) and not in_slice:
        return ModelEntry(item)
    if not isinstance(item, dict) or "model" not in item or not isinstance(item["model"], str):
        problems.append(f"{where}: each {'source' if in_slice else 'model'} needs a `model:` path")
        if isinstance(item, dict):
            _unknown(f"{where}: ", item, _SOURCE_KEYS if in_slice else _MODEL_KEYS, problems)
        return None
    refused = None if in_slice else {"layer_range": "it is read only on a slice's sources (mergekit ignores it "
                                                    "under `models:`); use `slices:` to take a range of layers"}
    _unknown(f"{where}: ", item, _SOURCE_KEYS if in_slice else _MODEL_KEYS, problems, refused)
    check_parameters(f"{where}.parameters", item.get("parameters"), method, "model", problems)
    layer_range = item.get("layer_range")
    if in_slice:
        if not (isinstance(layer_range, list) and len(layer_range) == 2
                and all(isinstance(i, int) and not isinstance(i, bool) for i in layer_range)
                and 0 <= layer_range[0] < layer_range[1]):
            problems.append(f"{where}.layer_range: expected [start, end] with 0 <= start < end, "
                            f"got {layer_range!r}")
            layer_range = None
    params = item.get("parameters") if isinstance(item.get("parameters"), dict) else {}
    return ModelEntry(item["model"], dict(params), tuple(layer_range) if in_slice and layer_range else None)


def _slices(data: dict, method: MergeMethod | None, problems: list[str]) -> list[Slice]:
    slices = []
    for i, item in enumerate(_list(data, "slices", problems)):
        where = f"slices[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("sources"), list) or not item["sources"]:
            problems.append(f"{where}: each slice needs `sources:`, a list of {{model, layer_range}}")
            continue
        _unknown(f"{where}: ", item, _SLICE_KEYS, problems,
                 {"residual_weight": "mergekit reads it but never uses it; remove it"})
        sources = [_entry(f"{where}.sources[{j}]", s, method, problems, True)
                   for j, s in enumerate(item["sources"])]
        check_parameters(f"{where}.parameters", item.get("parameters"), method, "slice", problems)
        lengths = {s.layer_range[1] - s.layer_range[0] for s in sources if s and s.layer_range}
        if len(lengths) > 1:
            problems.append(f"{where}: every source needs the same number of layers, got "
                            f"{[list(s.layer_range) for s in sources if s and s.layer_range]}")
        base = item.get("base_model")
        if base is not None and not isinstance(base, str):
            problems.append(f"{where}.base_model: expected a path, got {base!r}")
            base = None
        params = item.get("parameters") if isinstance(item.get("parameters"), dict) else {}
        slices.append(Slice(tuple(s for s in sources if s), dict(params), base or None))
    return slices


def _list(data: dict, key: str, problems: list[str]) -> list:
    """``data[key]`` when it is a list (or absent: empty); a problem otherwise."""
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{key}: expected a list, got {value!r}")
        return []
    return value


def _method(data: dict, problems: list[str]) -> MergeMethod | None:
    from .methods import METHODS  # registers every method

    name = data.get("merge_method")
    if isinstance(name, str) and name in METHODS:
        return METHODS[name]
    known = ", ".join(sorted(METHODS))
    if name is None:
        problems.append(f"the recipe needs `merge_method:`, one of: {known}")
    elif not isinstance(name, str):
        problems.append(f"merge_method: expected a method name, got {name!r}; known: {known}")
    elif name in _MERGEKIT_ONLY:
        problems.append(f"merge_method `{name}` is a mergekit method that modelgit does not implement; "
                        f"modelgit's methods: {known}")
    else:
        problems.append(f"unknown merge_method `{name}`{closest(name, METHODS)}; known: {known}")
    return None


def _tokenizer_source(data: dict, problems: list[str]) -> str | None:
    legacy, config = data.get("tokenizer_source"), data.get("tokenizer")
    if legacy is not None and config is not None:
        problems.append("give `tokenizer_source` or `tokenizer`, not both (as in mergekit)")
    if config is None:
        if legacy is not None and not isinstance(legacy, str):
            problems.append(f"tokenizer_source: expected base, union or a model, got {legacy!r}")
        return legacy if isinstance(legacy, str) else None
    if not isinstance(config, dict):
        problems.append(f"tokenizer: expected a mapping with `source:`, got {config!r}")
        return None
    refused = {"tokens": "per-token embedding sources need mergekit's vocabulary surgery",
               "pad_to_multiple_of": "modelgit does not resize the vocabulary"}
    set_keys = [k for k in config if config[k] or k not in refused]  # an empty tokens: or null is the default
    _unknown("tokenizer: ", set_keys, _TOKENIZER_KEYS, problems, refused)
    source = config.get("source", "union")  # mergekit's default
    if not isinstance(source, str):
        problems.append(f"tokenizer.source: expected base, union or a model, got {source!r}")
        return None
    return source


def _dtype(data: dict, problems: list[str]) -> str | None:
    name = data.get("out_dtype") or data.get("dtype")
    for key in ("dtype", "out_dtype"):
        value = data.get(key)
        if value is not None and str(value).lower() not in DTYPE_NAMES:
            problems.append(f"{key} {value!r} is not one of {sorted(DTYPE_NAMES)}"
                            f"{closest(str(value).lower(), DTYPE_NAMES)}")
    return DTYPE_NAMES.get(str(name).lower()) if name is not None else None


def _check_inputs(method: MergeMethod, base: str | None, models: list[ModelEntry], slices: list[Slice],
                  problems: list[str], warnings: list[str]) -> None:
    """The number of inputs per slice (base included) against the method's, and what becomes of a
    listed or unlisted base."""
    low, high = method.inputs
    want = f"exactly {low}" if low == high else (f"{low} to {high}" if high else f"at least {low}")
    if models:
        merged = model_inputs(method, base, tuple(models))
        count = len(merged) + (1 if base and not method.base_is_input else 0)
        if not low <= count <= (high or count):
            listing = [e.model for e in merged]
            if base and not method.base_is_input:
                why = f" and the base {base}"
            else:
                why = " (a base_model is one of its inputs, as in mergekit)" if base else ""
            problems.append(f"{method.name} takes {want} inputs counting the base, got {count}: {listing}{why}")
        for entry in models:
            if base and same_model(entry.model, base) and not method.base_is_input and entry.parameters:
                warnings.append(f"{entry.model} is the base_model of {method.name}: its parameters "
                                f"({', '.join(entry.parameters)}) are not used (mergekit ignores them too)")
        if base and method.base_is_input and not any(same_model(e.model, base) for e in models):
            warnings.append(f"{method.name} has no use for a base model: base_model {base} is merged as one "
                            "more model, as mergekit does (remove base_model to merge only the listed models)")
    for i, s in enumerate(slices):
        slice_base = s.base_model or base
        count = len(s.sources)
        if not low <= count <= (high or count):
            problems.append(f"slices[{i}]: {method.name} takes {want} inputs, got {count}")
        if slice_base and not method.base_is_input and not any(same_model(x.model, slice_base) for x in s.sources):
            problems.append(f"slices[{i}]: its base_model {slice_base} is not among its sources (mergekit "
                            "requires it there too)")
    if method.needs_base and not base and not (slices and all(s.base_model for s in slices)):
        problems.append(f"merge_method {method.name} needs a base_model")


def _no_effect(method: MergeMethod, levels: list[dict], warnings: list[str]) -> None:
    for (name, key), why in _NO_EFFECT.items():
        if method.name == name and any(key in p and p[key] != 1 for p in levels if isinstance(p, dict)):
            warnings.append(f"`{key}` has no effect on {name}: {why}")


def parse_recipe(data: dict, text: str = "") -> Recipe:
    """Validate a recipe mapping (module docstring) and return it typed.

    Raises:
        UsageError: listing every problem (unknown keys and parameters with the closest valid
            name, refused mergekit keys, malformed values, input counts).
    """
    if not isinstance(data, dict):
        raise UsageError(f"a merge recipe must be a YAML mapping, got {type(data).__name__}")
    problems: list[str] = []
    warnings: list[str] = []
    _unknown("", data, _TOP_KEYS, problems, _REFUSED_TOP)
    method = _method(data, problems)
    models = [_entry(f"models[{i}]", item, method, problems, False)
              for i, item in enumerate(_list(data, "models", problems))]
    models = [m for m in models if m]
    slices = _slices(data, method, problems)
    if not models and not slices and not data.get("models") and not data.get("slices"):
        problems.append("the recipe names no models (`models:` or `slices:`)")
    if data.get("models") and data.get("slices"):
        problems.append("`models:` and `slices:` are mutually exclusive")
    params = data.get("parameters") or {}
    check_parameters("parameters", params, method, "top", problems)
    params = params if isinstance(params, dict) else {}
    dtype = _dtype(data, problems)
    tokenizer_source = _tokenizer_source(data, problems)
    base = data.get("base_model")
    if base is not None and not isinstance(base, str):
        problems.append(f"base_model: expected a path, got {base!r}")
        base = None
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append(f"seed must be an integer, not {seed!r}")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        problems.append(f"name: expected a string, got {name!r}")
    heads = data.get("heads")
    if heads is not None and heads not in HEAD_RULES:
        problems.append(f"heads: expected one of {', '.join(HEAD_RULES)}, got {heads!r}"
                        f"{closest(str(heads), HEAD_RULES)}")
        heads = None
    if method is not None and not problems:
        _check_inputs(method, base, models, slices, problems, warnings)
        _no_effect(method, [params, *(m.parameters for m in models), *(s.parameters for s in slices),
                            *(x.parameters for s in slices for x in s.sources)], warnings)
    if problems:
        raise UsageError("invalid merge recipe:\n  " + "\n  ".join(problems))
    return Recipe(method.name, base, tuple(models), dict(params), dtype, seed, tuple(slices), tuple(warnings),
                  text, name, tokenizer_source, heads)


def load_recipe(path: str) -> Recipe:
    """Read and parse a recipe file.

    Raises:
        UsageError: unreadable, not YAML, several documents, or an invalid recipe.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read recipe {path}: {exc.strerror}") from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {exc}") from None
    if len(documents) > 1:
        raise UsageError(f"{path} holds {len(documents)} YAML documents (a mergekit-multi or mergekit-mega "
                         "file); `modelgit merge` runs one recipe: put each document in its own file and run "
                         "them in order, each merge's output directory being an input of the next")
    return parse_recipe(documents[0] if documents else None, text)
