"""``modelgit contribute``: validate an adapter against the base it claims, commit it on a
contribution branch with its metadata, and push it (objects first, through the pre-push hook).

A contribution is the directory ``<contributions>/<name>/`` (see :mod:`.project`) holding the
adapter, the metadata files ``modelgit train`` wrote and ``contribution.json`` (author, message,
base revision and fingerprint, adapter summary, data card, training metrics and settings), on the
branch ``contrib/<name>`` whose parent is the base revision. Local paths of the contributor's
machine (base, data, output) are not recorded.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import tempfile
from dataclasses import dataclass

from ..errors import FormatError, UsageError
from ..git.repo import GitRepo
from ..fingerprint import fingerprint_rev, tensor_infos_rev
from ..untrusted import load_json_file
from .gitops import commit_files, git_identity, parse_author
from .project import read_project
from .validate import ADAPTER_FILES, METADATA_FILES, ContributionError, validate_adapter

__all__ = ["BRANCH_PREFIX", "CONTRIBUTION_FILE", "Contribution", "contribute", "check_name",
           "read_training_config", "training_base_problems"]

BRANCH_PREFIX = "contrib/"
CONTRIBUTION_FILE = "contribution.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_LOCAL_PATHS = ("base", "data", "output", "overwrite", "threads")
_MAX_METADATA_BYTES = 16 * 1024 * 1024  # the project's own limit is applied by validation


@dataclass(frozen=True)
class Contribution:
    name: str
    branch: str
    commit: str
    base_revision: str
    pushed_to: str | None
    summary: dict


def check_name(name: str) -> str:
    """The contribution's name, or UsageError (it becomes a directory and a branch name)."""
    if not _NAME.match(name or "") or ".." in name:
        raise ContributionError(f"the contribution name {name!r}", [
            "a name is 1-63 characters of a-z, 0-9, '.', '_', '-', starting with a letter or "
            "digit: it names the directory inside the contribution area and the branch, so a "
            "path (with '/' or '..') would point outside the contribution area"])
    return name


def _metadata_file(adapter_dir: str, name: str) -> dict:
    """A metadata file of ``train`` (strict JSON within the metadata limit), {} when absent or
    not a JSON object (validation reports why)."""
    path = os.path.join(adapter_dir, name)
    if not os.path.isfile(path):
        return {}
    value = load_json_file(path, name, _MAX_METADATA_BYTES)
    return value if isinstance(value, dict) else {}


def read_training_config(adapter_dir: str) -> dict:
    """``training_config.json`` of an adapter directory, {} when absent.

    Raises:
        FormatError: not strict JSON, or over the size limit.
    """
    return _metadata_file(adapter_dir, "training_config.json")


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _metadata(adapter_dir: str) -> dict:
    out = {}
    for file in ("data_card.json", "metrics.json"):
        if os.path.isfile(os.path.join(adapter_dir, file)):
            out[file[:-5]] = _metadata_file(adapter_dir, file)
    training = read_training_config(adapter_dir)
    if training:
        config = {k: v for k, v in _dict(training.get("config")).items() if k not in _LOCAL_PATHS}
        out["training"] = {"config": config, "resolved": _dict(training.get("resolved")),
                           "versions": _dict(training.get("versions"))}
    return out


def training_base_problems(adapter_dir: str, claimed: str, base_rev: str) -> list[str]:
    """The base fingerprint ``train`` recorded must be the one of the base claimed (``[]`` when
    none was recorded, or the file is unreadable: validation reports that)."""
    try:
        resolved = _dict(read_training_config(adapter_dir).get("resolved"))
    except FormatError:
        return []
    recorded = resolved.get("base_fingerprint")
    if recorded and recorded != claimed:
        return [f"the adapter was trained on a different base (fingerprint {recorded[:12]}...) "
                f"than the base of revision {base_rev} ({claimed[:12]}...): pass --base-rev with "
                "the revision you trained on, or carry the adapter over with `modelgit rebase "
                f"ADAPTER --onto {base_rev}`"]
    return []


def model_type_rev(repo: GitRepo, rev: str, model_path: str) -> str | None:
    """The ``model_type`` in the base's config.json at ``rev`` (None when it has none)."""
    import json

    data = repo.read_blob(f"{rev}:{model_path}/config.json")
    try:
        config = json.loads(data) if data and len(data) < 4 * 1024 * 1024 else None
    except ValueError:
        return None
    kind = config.get("model_type") if isinstance(config, dict) else None
    return kind if isinstance(kind, str) else None


def contribute(repo: GitRepo, adapter_dir: str, name: str, message: str, author: str | None = None,
               base_rev: str = "HEAD", domain: str | None = None, remote: str | None = "origin",
               replace: bool = False) -> Contribution:
    """Validate ``adapter_dir`` against the base of ``base_rev`` and commit it as ``name``.

    Args:
        message: what the adapter is for (the commit message and ``contribution.json``).
        author: ``Name <email>`` (default: git's user.name / user.email).
        domain: the evaluation suite the contribution targets (reviewers' policy), if known.
        remote: push the branch (and its objects) there; None commits locally only.
        replace: replace an existing contribution branch of the same name.
    Raises:
        ContributionError: every problem with the adapter or the name at once.
        UsageError: unknown revision, branch exists, not a modelgit project.
    """
    check_name(name)
    if not message or not message.strip():
        raise UsageError("say what the contribution is for: --message 'LoRA on Python code'")
    base_commit = repo.resolve(base_rev, "--base-rev revision")  # names the closest branch or tag
    project = read_project(repo, base_commit)
    branch = BRANCH_PREFIX + name
    if repo.rev_parse(f"refs/heads/{branch}") and not replace:
        raise UsageError(f"branch {branch} exists: choose another --name, or pass --replace to "
                         "send a new version of this contribution")
    fingerprint = fingerprint_rev(repo, base_commit, project.model)
    problems = training_base_problems(adapter_dir, fingerprint, base_rev)
    try:
        summary = validate_adapter(adapter_dir, tensor_infos_rev(repo, base_commit, project.model),
                                   project.limits, project.labels,
                                   model_type_rev(repo, base_commit, project.model),
                                   project.classifier)
    except ContributionError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ContributionError(f"the contribution {name!r}", problems)
    who = parse_author(author) if author else git_identity(repo)
    record = {"contribution_version": 1, "name": name, "author": f"{who[0]} <{who[1]}>",
              "message": message.strip(), "domain": domain,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "base_revision": base_commit, "base_fingerprint": fingerprint, "adapter": summary,
              **_metadata(adapter_dir)}
    area = f"{project.contributions}/{name}"
    files = {f"{area}/{f}": os.path.join(adapter_dir, f) for f in (*ADAPTER_FILES, *METADATA_FILES)
             if os.path.isfile(os.path.join(adapter_dir, f))}
    with tempfile.TemporaryDirectory(prefix="modelgit-contrib-") as tmp:
        meta = os.path.join(tmp, CONTRIBUTION_FILE)
        with open(meta, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
        files[f"{area}/{CONTRIBUTION_FILE}"] = meta
        title = f"Contribute {name}: {message.strip().splitlines()[0]}"
        commit = commit_files(repo, base_commit, files, f"{title}\n\nModelgit-Contribution: {name}\n",
                              who, remove=[area])
    repo.git("update-ref", f"refs/heads/{branch}", commit)
    pushed = None
    if remote:
        if remote not in repo.git("remote").decode().split():
            raise UsageError(f"committed {branch}, but there is no remote {remote!r} to push it "
                             "to: add one (git remote add) or pass --no-push")
        repo.git("push", *(["--force"] if replace else []), remote, f"refs/heads/{branch}:refs/heads/{branch}")
        pushed = remote
    return Contribution(name, branch, commit, base_commit, pushed, summary)
