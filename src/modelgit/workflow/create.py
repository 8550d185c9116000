"""``modelgit create``: a new model repository around a base model, ready for contributions.

It runs ``git init``, sets modelgit up, tracks ``*.safetensors``, copies the base into ``model/``,
writes ``modelgit.yaml`` and the first release record ``releases/v1.json``, commits and tags
``v1``; with a remote it also pushes (objects first).
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess

from .._files import write_json
from ..errors import UsageError
from ..git import setup
from ..git.repo import GitRepo, find_repo
from .project import PROJECT_FILE, Project, write_project
from .releases import RELEASES_DIR

__all__ = ["create_project"]

_SKIPPED = ("README.md", ".gitattributes")


def _copy_base(base_dir: str, dest: str) -> None:
    if not os.path.isfile(os.path.join(base_dir, "config.json")) or \
            not any(f.endswith(".safetensors") for f in os.listdir(base_dir)):
        raise UsageError(f"{base_dir!r} is not a transformers model directory with safetensors "
                         "weights (config.json + *.safetensors): save it with "
                         "save_pretrained(dir, safe_serialization=True)")
    os.makedirs(dest)
    for name in sorted(os.listdir(base_dir)):
        path = os.path.join(base_dir, name)
        if os.path.isfile(path) and name not in _SKIPPED and not name.startswith("."):
            shutil.copyfile(path, os.path.join(dest, name))


def _is_relative_path(url: str) -> bool:
    return "://" not in url and ":" not in url.split("/", 1)[0] and not os.path.isabs(url)


def create_project(path: str, base_dir: str, project: Project, remote: str | None = None,
                   object_store: str | None = None, tag: str = "v1") -> GitRepo:
    """Create the repository at ``path`` (new or empty directory) around ``base_dir``.

    Args:
        remote: a git URL (e.g. a bare repository) added as ``origin`` and pushed to.
        object_store: the object store of ``origin`` (default: the local remote's own store).
    Raises:
        UsageError: ``path`` is not empty, ``base_dir`` is not a model directory.
    """
    if os.path.exists(path) and os.listdir(path):
        raise UsageError(f"{path!r} exists and is not empty: choose a new directory")
    result = subprocess.run(["git", "init", "-q", "-b", "main", path], capture_output=True, text=True)
    if result.returncode != 0:
        raise UsageError(f"git init {path} failed: {result.stderr.strip()}")
    repo = find_repo(path)
    setup.init_repo(repo)
    setup.track(repo, ["*.safetensors"])
    _copy_base(base_dir, os.path.join(repo.root, project.model))
    write_project(os.path.join(repo.root, PROJECT_FILE), project)
    os.makedirs(os.path.join(repo.root, RELEASES_DIR))
    record = {"release_version": 1, "name": project.name, "tag": tag,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": None, "base_model": project.base_model, "task": project.task,
              "method": None, "contributions": [], "results": [], "lineage": []}
    write_json(os.path.join(repo.root, RELEASES_DIR, f"{tag}.json"), record)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", f"Base model {project.name} {tag}\n\nModelgit-Release: {tag}\n")
    repo.git("tag", "-a", tag, "-m", f"{project.name} {tag}: the base model")
    if remote:
        repo.git("remote", "add", "origin", remote)
        if object_store:
            repo.config_set("modelgit.remote.origin.store", object_store)
        repo.git("push", "-q", "origin", "refs/heads/main", f"refs/tags/{tag}")
        # `git init --bare` names its HEAD master: a clone of the hub must check out main
        setup.adopt_remote_head(os.path.join(repo.root, remote) if _is_relative_path(remote)
                                else remote, "main")
    return repo
