"""The project file ``modelgit.yaml``: what a model repository is and the rules of contributing.

It is committed at the top of the repository, so contributors see the rules the maintainers
apply (the held-out data and its suites file stay local to the maintainers)::

    name: demo-smollm2                      # the model's name (model cards, model-index)
    base_model: HuggingFaceTB/SmolLM2-135M-Instruct   # where the first base came from (Hub id)
    model: model                            # the base model's directory in this repository
    contributions: contributions            # where contributions live: contributions/<name>/
    task: causal_lm                         # or classification
    labels: [negative, neutral, positive]   # classification: the class names in head order
    classifier: probe                       # classification: every contribution's kind
    limits: {max_rank: 64, max_adapter_mb: 100}
    policy: {min_gain: 0.01, max_regression: 0.02, confidence: 0.95,
             significant_regressions_only: false, specialist_min_gain: 0.10}

Every key is optional; the defaults are those above (``name``: the repository's directory;
``labels``: none, each adapter numbers the classes of its own data). With ``labels``, every
classification adapter must carry exactly that numbering (``train`` in the repository uses it;
``contribute`` and ``review`` refuse an adapter whose ``labels.json`` differs), so that adapters
trained on different subsets of the classes have compatible heads. ``classifier`` (``tuned`` or
``probe``; default: none, each contributor's ``train`` chooses) fixes the kind of classifier
every contribution is (``train --classifier``): heads that read the first token and heads that
read the mean of the tokens cannot be merged together, so ``release`` needs one kind.
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
    no other suite worsens by more than ``max_regression`` (both relative: 0.01 is 1 %).

    Every score comes with a ``confidence`` interval (0.95: 95 %), bootstrapped over the suite's
    documents. With ``significant_regressions_only``, a regression rejects only when it is
    significant: the whole interval of the suite's relative gain lies below
    ``-max_regression`` (a few documents' noise no longer rejects an adapter).

    A contribution rejected only because other suites regress, whose target suite gains at least
    ``specialist_min_gain`` (0.10: 10 %; None disables), is a *specialist*: recorded as such,
    kept in the adapter library of the next release and reached through its router, never
    merged into the weights."""

    min_gain: float = 0.01
    max_regression: float = 0.02
    confidence: float = 0.95
    significant_regressions_only: bool = False
    specialist_min_gain: float | None = 0.10

    def __post_init__(self):  # a NaN threshold would let every contribution through
        problems = [p for name in ("min_gain", "max_regression")
                    for p in [number_problem(getattr(self, name), f"policy.{name}", -1e6, 1e6)] if p]
        problem = number_problem(self.confidence, "policy.confidence", 0, 1, above_minimum=True,
                                 below_maximum=True)
        if problem:
            problems.append(problem + " (e.g. 0.95)")
        if self.specialist_min_gain is not None:
            problem = number_problem(self.specialist_min_gain, "policy.specialist_min_gain",
                                     -1e6, 1e6)
            if problem:
                problems.append(problem + " (or null: no specialists)")
        if not isinstance(self.significant_regressions_only, bool):
            problems.append(f"policy.significant_regressions_only is "
                            f"{self.significant_regressions_only!r}, not true or false")
        if problems:
            raise UsageError("; ".join(problems))


@dataclass(frozen=True)
class Project:
    name: str = "model"
    base_model: str | None = None
    model: str = "model"
    contributions: str = "contributions"
    task: str = "causal_lm"
    license: str | None = None
    language: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    classifier: str | None = None  # tuned or probe: the kind of every classification contribution
    limits: Limits = field(default_factory=Limits)
    policy: Policy = field(default_factory=Policy)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["language"] = list(self.language) if self.language else None
        data["labels"] = list(self.labels) if self.labels else None
        # settings added later are written only when set, so that an older modelgit can still
        # read a new project's file (it refuses keys it does not know)
        for key, default in (("confidence", 0.95), ("significant_regressions_only", False),
                             ("specialist_min_gain", 0.10)):
            if data["policy"][key] == default:
                del data["policy"][key]
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
            problems.append(f"{where}: unknown key {key!r}{_closest(key, known)} "
                            f"(known: {', '.join(sorted(known))})")
        elif value is None and known[key].default is not None and _nullable(cls, key):
            values[key] = None
        elif isinstance(known[key].default, bool):
            if isinstance(value, bool):
                values[key] = value
            else:
                problems.append(f"{where}.{key}: {value!r} is not true or false")
        elif number_problem(value, key, 0, 1e9) is not None:
            problems.append(f"{where}.{key}: {value!r} is not a finite non-negative number")
        else:
            values[key] = value
    try:
        return cls(**values)
    except UsageError as exc:
        problems.append(str(exc))
        return cls()


def _nullable(cls, key: str) -> bool:
    """Whether the setting may be null (``specialist_min_gain: null``: no specialists)."""
    return "None" in str(cls.__dataclass_fields__[key].type)


def _closest(key, known) -> str:
    import difflib

    match = difflib.get_close_matches(str(key), list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


#: the project's class names: at most this many, each a short plain name
MAX_PROJECT_LABELS = 10_000


def _labels(value, problems: list[str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() and len(v) <= 200
                                              and v.isprintable() for v in value):
        problems.append(f"labels: {str(value)[:200]!r} is not a list of class names")
        return None
    if not 2 <= len(value) <= MAX_PROJECT_LABELS:
        problems.append(f"labels: {len(value)} class(es): give between 2 and {MAX_PROJECT_LABELS}")
        return None
    repeated = sorted({v for v in value if value.count(v) > 1})
    if repeated:
        problems.append(f"labels: {', '.join(repeated[:10])} appear more than once")
        return None
    return tuple(value)


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
            problems.append(f"unknown key {key!r}{_closest(key, known)} "
                            f"(known: {', '.join(sorted(known))})")
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
                      labels=_labels(data.get("labels"), problems),
                      limits=_sub(Limits, data.get("limits"), "limits", problems),
                      policy=_sub(Policy, data.get("policy"), "policy", problems))
    classifier = data.get("classifier")
    if classifier is not None and (classifier not in ("tuned", "probe") or task != "classification"):
        problems.append(f"classifier: {str(classifier)[:40]!r}: give tuned or probe, and only for "
                        "task: classification")
    elif classifier is not None:
        project = replace(project, classifier=classifier)
    if project.labels and project.task != "classification":
        problems.append(f"labels: given for task {project.task!r}: class names are for "
                        "task: classification")
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
