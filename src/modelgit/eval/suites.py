"""Evaluation suites: named held-out data sets, each with a task and a headline metric.

The maintainer keeps them in a local YAML or JSON file that is never pushed (held-out data must
stay unseen by contributors)::

    suites:
      - name: medical
        data: heldout/medical.jsonl     # relative to this file
        task: causal_lm                 # or classification (default: from the metric)
        metric: perplexity              # causal_lm: perplexity; classification: accuracy, macro_f1
        max_examples: 500
      - name: sentiment
        data: heldout/sentiment.csv
        metric: macro_f1
        label_field: label
        validation: valid/sentiment.csv # optional: data only for choosing merge settings

A bare list of suites is accepted too. Every problem of the file is reported at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields

from ..data import TEXT_UNITS
from ..errors import UsageError

__all__ = ["METRICS", "SuiteConfig", "load_suites", "parse_suites"]

#: metric -> (task, higher is better)
METRICS = {"perplexity": ("causal_lm", False), "accuracy": ("classification", True),
           "macro_f1": ("classification", True)}
_DEFAULT_METRIC = {"causal_lm": "perplexity", "classification": "accuracy"}


@dataclass(frozen=True)
class SuiteConfig:
    """One evaluation suite."""

    name: str
    data: str
    task: str
    metric: str
    text_field: str = "text"
    label_field: str = "label"
    text_unit: str = "line"
    max_examples: int | None = None
    max_length: int = 256
    batch_size: int = 8
    validation: str | None = None  # data used only to choose merge settings (release --search)

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric][1]


_FIELDS = {f.name for f in fields(SuiteConfig)}
_POSITIVE = ("max_examples", "max_length", "batch_size")


def _suite_problems(raw, where: str, base_dir: str) -> tuple[list[str], dict]:
    if not isinstance(raw, dict):
        return [f"{where}: a {type(raw).__name__}, not a mapping of settings"], {}
    problems = [f"{where}: unknown setting {key!r} (known: {', '.join(sorted(_FIELDS))})"
                for key in raw if key not in _FIELDS]
    values = {k: v for k, v in raw.items() if k in _FIELDS}
    for key in ("name", "data"):
        if not isinstance(values.get(key), str) or not values[key].strip():
            problems.append(f"{where}: {key!r} is required (a non-empty string)")
    for key in ("text_field", "label_field", "text_unit", "validation"):
        if key in values and not isinstance(values[key], str):
            problems.append(f"{where}: {key!r} must be a string")
    if isinstance(values.get("text_unit"), str) and values["text_unit"] not in TEXT_UNITS:
        problems.append(f"{where}: text_unit {values['text_unit']!r} is not one of {', '.join(TEXT_UNITS)}")
    for key in _POSITIVE:
        value = values.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"{where}: {key!r} is {value!r}: it must be a positive integer")
    task, metric = values.get("task"), values.get("metric")
    if metric is not None and metric not in METRICS:
        problems.append(f"{where}: unknown metric {metric!r} (use {', '.join(METRICS)})")
        metric = None
    if task is not None and task not in _DEFAULT_METRIC:
        problems.append(f"{where}: unknown task {task!r} (use causal_lm or classification)")
        task = None
    if metric and task and METRICS[metric][0] != task:
        problems.append(f"{where}: metric {metric!r} does not apply to task {task!r} "
                        f"(use {_DEFAULT_METRIC[task]!r})")
    if "task" not in values and "metric" not in values:
        problems.append(f"{where}: give a task (causal_lm, classification) or a metric")
    values["task"] = task or (METRICS[metric][0] if metric else "causal_lm")
    values["metric"] = metric or _DEFAULT_METRIC[values["task"]]
    for key in ("data", "validation"):
        if isinstance(values.get(key), str) and values[key].strip():
            values[key] = os.path.normpath(os.path.join(base_dir, os.path.expanduser(values[key])))
            if not os.path.exists(values[key]):
                problems.append(f"{where}: {key} {values[key]!r} does not exist")
    return problems, values


def parse_suites(data, source: str = "<suites>", base_dir: str = ".") -> list[SuiteConfig]:
    """Suites from parsed YAML/JSON (``{"suites": [...]}`` or a list); relative data paths are
    resolved against ``base_dir``.

    Raises:
        UsageError: listing every problem found (unknown keys, missing or wrong values, metric
            and task that do not match, missing data files, duplicate names).
    """
    items = data.get("suites") if isinstance(data, dict) else data
    if isinstance(data, dict) and set(data) - {"suites"}:
        extra = ", ".join(sorted(map(str, set(data) - {"suites"})))
        raise UsageError(f"{source}: unknown top-level keys {extra}: put suites under 'suites:'")
    if not isinstance(items, list) or not items:
        raise UsageError(f"{source}: no suites: write a list of suites under 'suites:' "
                         "(each with name, data and task or metric)")
    problems, suites, seen = [], [], set()
    for index, raw in enumerate(items, 1):
        label = raw.get("name") if isinstance(raw, dict) else None
        where = f"{source}: suite {index}" + (f" ({label!r})" if isinstance(label, str) else "")
        found, values = _suite_problems(raw, where, base_dir)
        if isinstance(label, str):
            if label in seen:
                found.append(f"{where}: the name {label!r} is used twice")
            seen.add(label)
        problems.extend(found)
        if not found:
            suites.append(SuiteConfig(**values))
    if problems:
        raise UsageError(f"{len(problems)} problem(s) in the evaluation suites:\n  - "
                         + "\n  - ".join(problems))
    return suites


def load_suites(path: str | os.PathLike, names: list[str] | None = None) -> list[SuiteConfig]:
    """Read a YAML (``.yaml``/``.yml``) or JSON suites file; see :func:`parse_suites`.

    Args:
        names: keep only these suites (UsageError naming the file's suites if one is unknown).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"suites file {path!r} does not exist: write one (see `modelgit eval --help`)")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (ValueError, ImportError) as exc:
        raise UsageError(f"{path}: cannot parse it ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # yaml.YAMLError has no common base with ValueError
        raise UsageError(f"{path}: not valid YAML ({exc})") from None
    suites = parse_suites(data, path, os.path.dirname(os.path.abspath(path)))
    if names:
        unknown = sorted(set(names) - {s.name for s in suites})
        if unknown:
            raise UsageError(f"no suite named {', '.join(unknown)} in {path} (its suites: "
                             f"{', '.join(s.name for s in suites)})")
        suites = [s for s in suites if s.name in names]
    return suites
