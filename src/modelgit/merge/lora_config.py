"""``adapter_config.json`` of a PEFT LoRA adapter, read as untrusted data and checked as a whole.

Two levels of checks, each returning every problem at once:

* :func:`lora_config_problems`: what every reader needs (``modelgit merge``, release, review):
  the numbers PEFT computes with are finite and in range (``r``, ``lora_alpha``,
  ``rank_pattern``/``alpha_pattern`` values, ``lora_dropout``), settings have the right types,
  and every regular expression PEFT will run over module names is simple enough to match in
  linear time (a pattern like ``(a+)+$`` would hang the maintainer's review).
* :func:`feature_problems`: what review and ``contribute`` add: a contribution is plain LoRA
  data. PEFT settings that import modules (``megatron_config``), change the base model's
  structure or weights at load time (``layer_replication``, PiSSA/LoftQ/EVA initialisations,
  trainable tokens) or are not LoRA (DoRA) are refused, and so is any setting this module does not
  know unless it is null, false or empty: a PEFT feature added later may change what loading the
  adapter does, and nobody has checked it.
"""

from __future__ import annotations

import os
import re

from ..errors import FormatError
from ..untrusted import loads_json, number_problem, text_problem

__all__ = ["MAX_CONFIG_BYTES", "MAX_LORA_ALPHA", "read_lora_config", "lora_config_problems",
           "feature_problems", "pattern_problem"]

MAX_CONFIG_BYTES = 1024 * 1024
#: ``lora_alpha`` above this is a mistake or an attack (the update is scaled by alpha / r)
MAX_LORA_ALPHA = 4096.0
#: ranks above this make no sense for any model modelgit handles (projects set lower limits)
MAX_RANK = 65536
_MAX_PATTERN = 256
_MAX_REPEATS = 3
_MAX_NAMES = 4096

# what a module-name pattern may contain: names, escaped dots, '.', '.*', '.+', digit runs,
# alternation, groups without quantifiers, anchors. No nested or stacked repetition, so
# matching is linear in the name (times a small constant), whatever the name.
_PATTERN_TOKEN = re.compile(r"[A-Za-z0-9_\-]|\\\.|\.[*+]?|\\d\+|\[0-9\]\+|[|()^$]")

#: settings that must be absent, null, false or empty in a contribution, and why
_OFF = {
    "auto_mapping": "names classes to import (code)",
    "megatron_config": "makes PEFT import the module megatron_core names (code)",
    "use_dora": "asks for DoRA, which is not LoRA (not accepted yet)",
    "use_qalora": "asks for QALoRA, which is not plain LoRA",
    "lora_bias": "adds bias terms that modelgit does not merge",
    "layer_replication": "changes the base model's structure when loaded",
    "loftq_config": "re-initialises the base weights when loaded",
    "eva_config": "re-initialises the adapter from data when loaded",
    "corda_config": "re-initialises the base weights when loaded",
    "trainable_token_indices": "replaces embedding rows outside LoRA",
    "target_parameters": "adapts raw parameters, not modules",
    "alora_invocation_tokens": "asks for activated LoRA, which changes how the model runs",
    "arrow_config": "routes between adapters at run time",
    "ensure_weight_tying": "ties adapter weights across modules",
}
#: settings a contribution may carry with a value (checked here or in lora_config_problems)
_KNOWN = {"peft_type", "r", "lora_alpha", "rank_pattern", "alpha_pattern", "lora_dropout",
          "use_rslora", "fan_in_fan_out", "target_modules", "modules_to_save", "exclude_modules",
          "layers_to_transform", "layers_pattern", "bias", "init_lora_weights", "task_type",
          "inference_mode", "base_model_name_or_path", "revision", "peft_version", "megatron_core",
          "qalora_group_size", *_OFF}
_TASK_TYPES = ("CAUSAL_LM", "SEQ_CLS", "SEQ_2_SEQ_LM", "TOKEN_CLS", "QUESTION_ANS",
               "FEATURE_EXTRACTION")
_WHERE = "adapter_config.json"


def read_lora_config(adapter_dir: str) -> tuple[dict, bytes]:
    """The parsed ``adapter_config.json`` of ``adapter_dir`` and its bytes, checked by
    :func:`lora_config_problems`.

    Raises:
        FormatError: unreadable, over 1 MiB, not strict JSON, or listing every problem of its
            values.
    """
    where = f"{adapter_dir}/{_WHERE}"
    try:
        with open(os.path.join(adapter_dir, _WHERE), "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise FormatError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    config = loads_json(raw, where, MAX_CONFIG_BYTES)
    problems = lora_config_problems(config)
    if problems:
        raise FormatError(f"{where} is not a usable LoRA config, {len(problems)} problem(s):\n  - "
                          + "\n  - ".join(problems))
    return config, raw


def pattern_problem(value, what: str) -> str | None:
    """None when ``value`` is a module-name pattern PEFT can match in linear time."""
    if not isinstance(value, str) or not value:
        return f"{what} is {value!r}, not a non-empty string"
    if len(value) > _MAX_PATTERN:
        return f"{what} is {len(value)} characters long, over the limit of {_MAX_PATTERN}"
    position, repeats = 0, 0
    while position < len(value):
        token = _PATTERN_TOKEN.match(value, position)
        if token is None:
            return (f"{what} {value[:80]!r}: {value[position]!r} at {position} is not allowed in "
                    "a module pattern (names, '\\.', '.', '.*', '.+', '\\d+', '[0-9]+', '|', "
                    "groups without quantifiers, '^', '$')")
        repeats += token.group().endswith(("*", "+"))
        position = token.end()
    if repeats > _MAX_REPEATS:
        return f"{what} {value[:80]!r} repeats {repeats} times, over the limit of {_MAX_REPEATS}"
    try:
        re.compile(value)
    except re.error as exc:
        return f"{what} {value[:80]!r} is not a valid pattern ({exc})"
    return None


def _names_problems(value, what: str, patterns: bool) -> list[str]:
    """A name / pattern or a list of names (exact module names or suffixes)."""
    if value is None:
        return []
    if isinstance(value, str):
        problem = pattern_problem(value, what) if patterns else text_problem(value, what, 256)
        return [problem] if problem else []
    if not isinstance(value, list) or len(value) > _MAX_NAMES:
        return [f"{what} is {str(value)[:60]!r}: expected a string or a list of at most "
                f"{_MAX_NAMES} strings"]
    return [p for i, name in enumerate(value)
            for p in [text_problem(name, f"{what}[{i}]", 256)] if p]


def _pattern_map_problems(config: dict, key: str, value_problem) -> list[str]:
    mapping = config.get(key)
    if mapping is None:
        return []
    if not isinstance(mapping, dict) or len(mapping) > _MAX_NAMES:
        return [f"{key} must map at most {_MAX_NAMES} module patterns to values, not "
                f"{str(mapping)[:60]!r}"]
    problems = []
    for pattern, value in mapping.items():
        problems.extend(p for p in (pattern_problem(pattern, f"{key} key"),
                                    value_problem(value, f"{key}[{pattern[:60]!r}]")) if p)
    return problems


def _rank_problem(value, what):
    return number_problem(value, what, 1, MAX_RANK, integer=True)


def _alpha_problem(value, what):
    return number_problem(value, what, 0, MAX_LORA_ALPHA, above_minimum=True)


def lora_config_problems(config) -> list[str]:
    """Every problem that stops a LoRA config from being read safely (see the module docstring);
    each message names the setting and its value."""
    if not isinstance(config, dict):
        return [f"expected a JSON object of settings, got {type(config).__name__}"]
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {str(config.get('peft_type'))[:40]!r}: only LoRA adapters are "
                        "accepted")
    if "r" not in config:
        problems.append("r (the rank) is missing")
    else:
        problems.extend(p for p in [_rank_problem(config["r"], "r")] if p)
    if config.get("lora_alpha") is not None:
        problems.extend(p for p in [_alpha_problem(config["lora_alpha"], "lora_alpha")] if p)
    problems += _pattern_map_problems(config, "rank_pattern", _rank_problem)
    problems += _pattern_map_problems(config, "alpha_pattern", _alpha_problem)
    if config.get("lora_dropout") is not None:
        problems.extend(p for p in [number_problem(config["lora_dropout"], "lora_dropout", 0, 1,
                                                   below_maximum=True)] if p)
    for key in ("use_rslora", "fan_in_fan_out", "use_dora", "inference_mode"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            problems.append(f"{key} is {str(config[key])[:40]!r}, not true or false")
    target = config.get("target_modules")
    problems += _names_problems(target, "target_modules", patterns=isinstance(target, str))
    problems += _names_problems(config.get("modules_to_save"), "modules_to_save", patterns=False)
    exclude = config.get("exclude_modules")
    problems += _names_problems(exclude, "exclude_modules", patterns=isinstance(exclude, str))
    return problems


def _is_off(value) -> bool:
    return value is None or value is False or value in ({}, [], "")


def feature_problems(config: dict) -> list[str]:
    """What a contribution may not use beyond plain LoRA data (see the module docstring)."""
    problems = []
    for key, value in sorted(config.items()):
        if key in _OFF and not _is_off(value):
            problems.append(f"{key} is set: it {_OFF[key]}; remove it")
        elif key not in _KNOWN and not _is_off(value):
            problems.append(f"{str(key)[:60]!r} is a setting modelgit does not know: it must be "
                            "absent or null (a PEFT feature nobody checked may change what "
                            "loading the adapter does)")
    if config.get("bias", "none") not in ("none", "all", "lora_only", None):
        problems.append(f"bias is {str(config.get('bias'))[:40]!r}, not none, all or lora_only")
    if config.get("init_lora_weights", True) not in (True, False, "gaussian", None):
        problems.append(f"init_lora_weights is {str(config.get('init_lora_weights'))[:40]!r}: "
                        "initialisations that rewrite the base weights when loaded (PiSSA, OLoRA, "
                        "LoftQ...) are not accepted")
    if config.get("task_type") not in (None, *_TASK_TYPES):
        problems.append(f"task_type is {str(config.get('task_type'))[:40]!r}, not one of "
                        f"{', '.join(_TASK_TYPES)}")
    for key in ("base_model_name_or_path", "revision", "peft_version", "megatron_core"):
        if config.get(key) is not None:
            problems.extend(p for p in [text_problem(config[key], key, 1024)] if p)
    layers = config.get("layers_to_transform")
    if layers is not None and not (
            number_problem(layers, "", 0, 1 << 20, integer=True) is None
            or (isinstance(layers, list) and len(layers) <= _MAX_NAMES and all(
                number_problem(x, "", 0, 1 << 20, integer=True) is None for x in layers))):
        problems.append(f"layers_to_transform is {str(layers)[:60]!r}: expected a layer index or "
                        "a list of them")
    pattern = config.get("layers_pattern")
    patterns = [] if pattern is None else pattern if isinstance(pattern, list) else [pattern]
    for i, value in enumerate(patterns[:_MAX_NAMES + 1]):
        problems.extend(p for p in [pattern_problem(value, f"layers_pattern[{i}]")] if p)
    group = config.get("qalora_group_size")
    if group is not None:
        problems.extend(p for p in [number_problem(group, "qalora_group_size", 1, 1 << 20,
                                                   integer=True)] if p)
    return problems
