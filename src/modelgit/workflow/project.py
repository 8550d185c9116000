"""The project file ``modelgit.yaml``: what a model repository is and the rules of contributing.

It is committed at the top of the repository, so contributors see the rules the maintainers
apply (the held-out data and its suites file stay local to the maintainers)::

    name: demo-smollm2                      # the model's name (model cards, model-index)
    base_model: HuggingFaceTB/SmolLM2-135M-Instruct   # where the first base came from (Hub id)
    model: model                            # the base model's directory in this repository
    contributions: contributions            # where contributions live: contributions/<name>/
    task: causal_lm                         # or classification
    limits: {max_rank: 64, max_adapter_mb: 100}
    policy: {min_gain: 0.01, max_regression: 0.02}

Every key is optional; the defaults are those above (``name``: the repository's directory).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace

from ..errors import UsageError
from ..untrusted import number_problem

__all__ = ["PROJECT_FILE", "Limits", "Policy", "Project", "parse_project", "read_project",
           "write_project"]

PROJECT_FILE = "modelgit.yaml"


def _check_numbers(settings, where: str, low: float, high: float) -> None:
    problems = [p for f in fields(settings)
                for p in [number_problem(getattr(settings, f.name), f"{where}.{f.name}", low, high)] if p]
    if problems:
        raise UsageError("; ".join(problems) + ": give finite numbers")


@dataclass(frozen=True)
class Limits:
    """What a contribution may weigh: refused beyond these."""

    max_rank: int = 64
    max_adapter_mb: float = 100.0
    max_metadata_kb: int = 1024

    def __post_init__(self):
        _check_numbers(self, "limits", 0, 1e9)

    @property
    def max_adapter_bytes(self) -> int:
        return int(self.max_adapter_mb * 1024 * 1024)


@dataclass(frozen=True)
class Policy:
    """When a contribution is accepted: its target suite improves by at least ``min_gain`` and
    no other suite worsens by more than ``max_regression`` (both relative: 0.01 is 1 %)."""

    min_gain: float = 0.01
    max_regression: float = 0.02

    def __post_init__(self):  # a NaN threshold would let every contribution through
        _check_numbers(self, "policy", -1e6, 1e6)


@dataclass(frozen=True)
class Project:
    name: str = "model"
    base_model: str | None = None
    model: str = "model"
    contributions: str = "contributions"
    task: str = "causal_lm"
    license: str | None = None
    language: tuple[str, ...] | None = None
    limits: Limits = field(default_factory=Limits)
    policy: Policy = field(default_factory=Policy)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["language"] = list(self.language) if self.language else None
        return {k: v for k, v in data.items() if v is not None}


def _sub(cls, raw, where: str, problems: list[str]):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping, got {raw!r}")
        return cls()
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            problems.append(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        elif number_problem(value, key, 0, 1e9) is not None:
            problems.append(f"{where}.{key}: {value!r} is not a finite non-negative number")
        else:
            values[key] = value
    return cls(**values)


def _rel_dir(value, key: str, problems: list[str]) -> str | None:
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{key}: {value!r} is not a directory name")
        return None
    norm = os.path.normpath(value).replace(os.sep, "/")
    if os.path.isabs(value) or norm.startswith("..") or norm == ".":
        problems.append(f"{key}: {value!r} must be a directory inside the repository")
        return None
    return norm


def parse_project(data, source: str = PROJECT_FILE, default_name: str = "model") -> Project:
    """A :class:`Project` from the parsed YAML. Raises UsageError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping of settings")
    problems: list[str] = []
    known = {f.name for f in fields(Project)}
    for key in data:
        if key not in known:
            problems.append(f"unknown key {key!r} (known: {', '.join(sorted(known))})")
    project = Project(name=str(data.get("name") or default_name))
    if data.get("base_model") is not None:
        project = replace(project, base_model=str(data["base_model"]))
    for key in ("model", "contributions"):
        if key in data:
            value = _rel_dir(data[key], key, problems)
            if value:
                project = replace(project, **{key: value})
    task = data.get("task", "causal_lm")
    if task not in ("causal_lm", "classification"):
        problems.append(f"task: {task!r} is not causal_lm or classification")
    language = data.get("language")
    if isinstance(language, str):
        language = [language]
    project = replace(project, task=task if task in ("causal_lm", "classification") else "causal_lm",
                      license=data.get("license"),
                      language=tuple(language) if language else None,
                      limits=_sub(Limits, data.get("limits"), "limits", problems),
                      policy=_sub(Policy, data.get("policy"), "policy", problems))
    if project.model == project.contributions:
        problems.append("model and contributions must be different directories")
    if problems:
        raise UsageError(f"{len(problems)} problem(s) in {source}:\n  - " + "\n  - ".join(problems))
    return project


def read_project(repo, rev: str | None = None) -> Project:
    """The project settings of ``repo`` at ``rev`` (None: the work tree); defaults when absent."""
    import yaml

    default_name = os.path.basename(os.path.normpath(repo.root))
    if rev is None:
        path = os.path.join(repo.root, PROJECT_FILE)
        text = open(path, encoding="utf-8").read() if os.path.isfile(path) else None
    else:
        blob = repo.read_blob(f"{rev}:{PROJECT_FILE}")
        text = blob.decode("utf-8") if blob is not None else None
    if text is None:
        return Project(name=default_name)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{PROJECT_FILE} is not valid YAML ({exc}): fix it") from None
    return parse_project(data, PROJECT_FILE if rev is None else f"{rev}:{PROJECT_FILE}", default_name)


def write_project(path: str, project: Project) -> None:
    import yaml

    from .._files import write_atomic

    write_atomic(path, yaml.safe_dump(project.to_dict(), sort_keys=False))
