"""``modelgit rebase ADAPTER --onto REV``: carry an adapter trained on an older base onto a newer
one, and report what that does to it.

A LoRA adapter is an additive update ``scale · B A`` per module, so carrying it means applying
the same update to the new base: the adapter's weights are kept, and its record of the base it
fits (``training_config.json``'s ``base_fingerprint``) moves to the new base, with the old one
kept under ``rebased_from``. Its evaluation on the suites is reported on the old base and on the
new one; optionally a short re-training on the new base (``data`` + ``steps``) continues from
the carried adapter, and is evaluated too.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field

from .._files import write_json
from .._outputs import check_output, install_directory, remove, remove_stale_temporaries, temporary_path
from ..errors import UsageError
from ..fingerprint import fingerprint_rev
from ..git.repo import GitRepo
from ..untrusted import load_json_file
from .contribution import CONTRIBUTION_FILE, read_training_config
from .gitops import export_dir, scratch_dir
from .project import read_project
from .validate import ADAPTER_FILES, METADATA_FILES

__all__ = ["RebaseResult", "find_base_revision", "rebase"]


@dataclass
class RebaseResult:
    output: str
    from_revision: str
    onto_revision: str
    before: list[dict] = field(default_factory=list)  # old base + adapter
    after: list[dict] = field(default_factory=list)  # new base + carried adapter
    new_base: list[dict] = field(default_factory=list)  # new base alone
    retrained: list[dict] | None = None  # new base + re-trained adapter


def _recorded_base(adapter_dir: str) -> tuple[str | None, str | None]:
    """(base fingerprint, base revision) the adapter says it was trained on."""
    resolved = read_training_config(adapter_dir).get("resolved")
    fingerprint = _hex(resolved.get("base_fingerprint")) if isinstance(resolved, dict) else None
    revision = None
    path = os.path.join(adapter_dir, CONTRIBUTION_FILE)
    if os.path.isfile(path):  # someone else's adapter, maybe: ids only, never options for git
        record = load_json_file(path, max_bytes=16 * 1024 * 1024)
        if isinstance(record, dict):
            fingerprint = fingerprint or _hex(record.get("base_fingerprint"))
            revision = _hex(record.get("base_revision"))
    return fingerprint, revision


def _hex(value) -> str | None:
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{40,64}", value) else None


def find_base_revision(repo: GitRepo, model_path: str, fingerprint: str) -> str | None:
    """The newest commit (any branch or tag) whose base weights have ``fingerprint``."""
    commits = repo.git("log", "--all", "--format=%H", "--", model_path).decode().split()
    for commit in commits:
        try:
            if fingerprint_rev(repo, commit, model_path) == fingerprint:
                return commit
        except UsageError:
            continue
    return None


def _carry(adapter_dir: str, out: str, old_fp: str | None, new_fp: str, old_rev: str, new_rev: str) -> None:
    out = os.path.normpath(out)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent, os.path.basename(out))  # left by a killed rebase
    tmp = temporary_path(out)
    os.makedirs(tmp)
    try:
        for name in (*ADAPTER_FILES, *METADATA_FILES):
            if os.path.isfile(os.path.join(adapter_dir, name)):
                shutil.copyfile(os.path.join(adapter_dir, name), os.path.join(tmp, name))
        config = read_training_config(adapter_dir)
        resolved = config.setdefault("resolved", {})
        resolved["rebased_from"] = {"base_fingerprint": old_fp, "base_revision": old_rev}
        resolved["base_fingerprint"] = new_fp
        resolved["base_revision"] = new_rev
        write_json(os.path.join(tmp, "training_config.json"), config)
        install_directory(tmp, out)  # absent (checked by rebase), or emptied meanwhile
    finally:
        remove(tmp)


def rebase(repo: GitRepo, adapter_dir: str, onto: str, output: str, suites=None,
           from_rev: str | None = None, retrain_data: str | None = None, retrain_steps: int = 20,
           retrain_lr: float = 1e-4, seed: int = 0, progress: bool | None = False) -> RebaseResult:
    """Carry ``adapter_dir`` onto the base of revision ``onto``, writing the result to ``output``.

    Args:
        suites: evaluate before/after on these (a list of SuiteConfig); None skips evaluation.
        from_rev: the revision the adapter was trained on (default: found from its recorded base
            fingerprint, or the base revision of a contribution).
        retrain_data: continue training the carried adapter on the new base with this data
            for ``retrain_steps`` steps at ``retrain_lr``; ``output`` then holds the re-trained one.
    Raises:
        UsageError: unknown revisions, an adapter without a known base, an existing output.
    """
    from ..eval import evaluate_suites

    project = read_project(repo)
    if not os.path.isfile(os.path.join(adapter_dir, "adapter_config.json")):
        raise UsageError(f"{adapter_dir!r} is not a PEFT adapter directory (no adapter_config.json)")
    if check_output(output, "directory", flag=None) != "absent":  # refuses links, devices...
        raise UsageError(f"output {output!r} exists: choose a new directory")
    onto_commit = repo.resolve(onto, "--onto revision")  # names the closest branch or tag
    old_fp, old_rev = _recorded_base(adapter_dir)
    from_commit = repo.resolve(from_rev, "--from revision") if from_rev else None
    if from_commit is None and old_fp:
        from_commit = find_base_revision(repo, project.model, old_fp)
    if from_commit is None and old_rev:
        from_commit = repo.rev_parse(old_rev)
    if from_commit is None:
        raise UsageError(f"cannot tell which base {adapter_dir!r} was trained on (no base "
                         "fingerprint recorded, or no revision of this repository has it): pass "
                         "--from REV")
    new_fp = fingerprint_rev(repo, onto_commit, project.model)
    result = RebaseResult(output, from_commit, onto_commit)
    with scratch_dir(repo, "rebase-") as work:
        new_base = export_dir(repo, onto_commit, project.model, os.path.join(work, "new-base"), progress)
        _carry(adapter_dir, output, old_fp or fingerprint_rev(repo, from_commit, project.model),
               new_fp, from_commit, onto_commit)
        if suites:
            old_base = export_dir(repo, from_commit, project.model, os.path.join(work, "old-base"), progress)
            result.before = evaluate_suites(old_base, adapter_dir, suites, progress)
            result.new_base = evaluate_suites(new_base, None, suites, progress)
            result.after = evaluate_suites(new_base, output, suites, progress)
        if retrain_data:
            from ..adapters import TrainConfig, train

            carried = os.path.join(work, "carried")
            shutil.copytree(output, carried)
            train(TrainConfig(base=new_base, data=retrain_data, output=output, overwrite=True,
                              init_adapter=carried, steps=retrain_steps, lr=retrain_lr, seed=seed),
                  progress=progress)
            _fix_rebased_from(output, old_fp, from_commit)  # train recorded the new base's fingerprint
            if suites:
                result.retrained = evaluate_suites(new_base, output, suites, progress)
    return result


def _fix_rebased_from(adapter_dir: str, old_fp: str | None, old_rev: str) -> None:
    path = os.path.join(adapter_dir, "training_config.json")
    config = load_json_file(path, max_bytes=16 * 1024 * 1024)
    if not isinstance(config.get("resolved"), dict):
        config["resolved"] = {}
    config.setdefault("resolved", {})["rebased_from"] = {"base_fingerprint": old_fp,
                                                         "base_revision": old_rev}
    write_json(path, config)
