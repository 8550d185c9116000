"""``modelgit init`` and ``modelgit track``: wire modelgit into one repository.

Everything goes into the repository's own config (never the global one), so a repository that
was not initialised is untouched, and CI machines need no global state (``modelgit install``,
in :mod:`.install`, is the opt-in for every repository of a user). Hooks already present are
kept: an existing hook is moved aside and called first by a small wrapper.
"""

from __future__ import annotations

import difflib
import os
import shlex
import subprocess
import sys

from ..errors import UnknownRevisionError, UsageError
from .repo import FILTER_NAME, GitError, GitRepo, find_repo

__all__ = ["init_repo", "track", "clone", "adopt_remote_head", "modelgit_command", "config_items",
           "hooks_dir", "install_hook", "ATTRIBUTES", "HOOKS", "HOOK_MARKER"]

ATTRIBUTES = f"filter={FILTER_NAME} diff={FILTER_NAME} merge={FILTER_NAME} -text"
HOOK_MARKER = "# installed by modelgit"
HOOKS = ("pre-push",)


def modelgit_command() -> str:
    """How git should call this modelgit: the same interpreter, whatever PATH git sees."""
    override = os.environ.get("MODELGIT_GIT_COMMAND")
    return override or f"{shlex.quote(sys.executable)} -m modelgit"


def config_items() -> dict[str, str]:
    """The git config keys that wire modelgit into git, and their values."""
    cmd = modelgit_command()
    return {
        f"filter.{FILTER_NAME}.process": f"{cmd} filter-process",
        f"filter.{FILTER_NAME}.required": "true",
        f"diff.{FILTER_NAME}.command": f"{cmd} git-diff",
        f"merge.{FILTER_NAME}.name": "modelgit tensor-wise merge",
        f"merge.{FILTER_NAME}.driver": f"{cmd} merge-driver %O %A %B %P",
    }


def init_repo(repo: GitRepo) -> list[str]:
    """Configure filter, diff and merge drivers and hooks; return what was done (idempotent)."""
    done = []
    for key, value in config_items().items():
        if repo.config_get(key) != value:
            repo.config_set(key, value)
            done.append(f"set {key}")
    os.makedirs(repo.store_path, exist_ok=True)
    repo.store()
    directory = hooks_dir(repo)
    for name in HOOKS:
        action = install_hook(directory, name)
        if action:
            done.append(action)
    return done


def hooks_dir(repo: GitRepo) -> str:
    """Where git looks for ``repo``'s hooks (``core.hooksPath``, else the git dir's hooks)."""
    directory = repo.git("rev-parse", "--git-path", "hooks").decode().strip()
    return directory if os.path.isabs(directory) else os.path.join(repo.root, directory)


def _hook_script(name: str, chained: str | None) -> str:
    cmd = modelgit_command()
    lines = ["#!/bin/sh", HOOK_MARKER, "set -e"]
    if chained:
        # the hook reads ref lines on stdin: keep a copy so both hooks see them
        lines += ['input=$(mktemp)', 'trap \'rm -f "$input"\' EXIT', 'cat > "$input"',
                  f'"$(dirname "$0")/{chained}" "$@" < "$input"',
                  f'{cmd} {name} "$@" < "$input"']
    else:
        lines.append(f'exec {cmd} {name} "$@"')
    return "\n".join(lines) + "\n"


def install_hook(directory: str, name: str) -> str | None:
    """Write modelgit's hook ``name`` into ``directory``; a hook of the user's already there is
    moved to ``NAME.before-modelgit`` and run first. Returns what was done (None: nothing)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    chained = None
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as handle:
            current = handle.read()
        if HOOK_MARKER in current:
            expected_chain = f"{name}.before-modelgit"
            chained = expected_chain if expected_chain in current else None
            if current == _hook_script(name, chained):
                return None
        else:
            chained = f"{name}.before-modelgit"
            os.replace(path, os.path.join(directory, chained))
    # whole or not at all (a filter process may install it while another git command runs)
    tmp = f"{path}.modelgit-tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(_hook_script(name, chained))
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return f"installed hook {name}" + (f" (your previous hook runs first: {chained})" if chained else "")


def track(repo: GitRepo, patterns: list[str]) -> list[str]:
    """Add ``PATTERN filter=modelgit diff=modelgit merge=modelgit -text`` lines to .gitattributes."""
    path = os.path.join(repo.root, ".gitattributes")
    existing = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    lines = existing.splitlines()
    added = []
    for pattern in patterns:
        line = f"{pattern} {ATTRIBUTES}"
        if line not in lines:
            lines.append(line)
            added.append(pattern)
    if added:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    return added


def clone(url: str, target: str, branch: str | None = None, object_store: str | None = None) -> GitRepo:
    """``git clone`` with modelgit set up before the first checkout, so tensors are fetched
    (only those of the checked-out revision) from the remote's object store.

    The clone is made under a temporary name next to ``target`` and renamed into place once it
    is checked out, so a clone that fails (or is interrupted, or killed: the next clone into that
    directory removes what a dead process left) leaves nothing behind, and can simply be run
    again. When the remote's HEAD names a branch that does not exist (``git init --bare`` names
    it ``master``; a push may have created only ``main``), the clone follows the branch that
    does: the only one, else ``main``, else ``master``.

    Args:
        branch: the branch or tag to check out (default: the remote's HEAD).
        object_store: the remote's object store URL, when it is not the local remote's own
            (saved as ``modelgit.remote.origin.store``).
    Raises:
        UsageError: ``target`` exists and is not an empty directory.
        UnknownRevisionError: ``branch`` is no branch or tag of the remote (naming the closest),
            or the remote's HEAD names no branch and several others exist.
        GitError: git clone or checkout failed.
    """
    from .._outputs import install_directory, remove, remove_stale_temporaries, temporary_path

    if os.path.lexists(target) and not (os.path.isdir(target) and not os.path.islink(target)
                                        and not os.listdir(target)):
        raise UsageError(f"destination {target!r} already exists and is not an empty directory: "
                         "choose another, or remove it")
    remove_stale_temporaries(os.path.dirname(os.path.abspath(target)) or ".",
                             os.path.basename(os.path.abspath(target)))
    tmp = temporary_path(target)
    try:
        _clone_into(url, tmp, branch, object_store)
        install_directory(tmp, target, user_modes=False)  # git's read-only objects stay so
    except BaseException:
        remove(tmp)
        raise
    return find_repo(target)


def adopt_remote_head(url: str, branch: str) -> bool:
    """After the first push of ``branch`` to a local bare repository at ``url`` whose HEAD names
    a branch that does not exist (``git init --bare`` names it ``master``), point that HEAD at
    ``branch``, as a hub does for the first branch pushed to it, so that ``git clone`` checks it
    out. Returns whether HEAD was changed; remotes that are not local directories are left alone
    (:func:`clone` follows the existing branch anyway).
    """
    path = url[len("file://"):] if url.startswith("file://") else url
    if "://" in path or not os.path.isdir(path):
        return False
    head = subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=path, capture_output=True, text=True)
    exists = subprocess.run(["git", "rev-parse", "-q", "--verify", f"refs/heads/{branch}"], cwd=path,
                            capture_output=True, text=True)
    if head.returncode != 0 or exists.returncode != 0:
        return False
    current = head.stdout.strip()
    if subprocess.run(["git", "rev-parse", "-q", "--verify", current], cwd=path,
                      capture_output=True).returncode == 0:
        return False  # HEAD names a branch that exists: the hub's choice, kept
    subprocess.run(["git", "symbolic-ref", "HEAD", f"refs/heads/{branch}"], cwd=path,
                   capture_output=True, check=True)
    return True


def _remote_refs(url: str) -> tuple[list[str], list[str]]:
    """(branches, tags) of the repository at ``url`` (``git ls-remote``)."""
    result = subprocess.run(["git", "ls-remote", "--heads", "--tags", url], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise GitError(f"git ls-remote {url} failed: {result.stderr.strip()}")
    branches, tags = [], []
    for line in result.stdout.splitlines():
        ref = line.split("\t", 1)[-1]
        if ref.startswith("refs/heads/"):
            branches.append(ref[len("refs/heads/"):])
        elif ref.startswith("refs/tags/") and not ref.endswith("^{}"):
            tags.append(ref[len("refs/tags/"):])
    return branches, tags


def _check_branch(url: str, branch: str) -> None:
    """Refuse a ``--branch`` that the remote lacks, naming the closest one it has."""
    branches, tags = _remote_refs(url)
    if branch in branches or branch in tags:
        return
    close = difflib.get_close_matches(branch, branches + tags, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnknownRevisionError(
        f"unknown branch {branch!r} of {url}{hint}; its branches: "
        f"{', '.join(sorted(branches)[:8]) or 'none'}; tags: {', '.join(sorted(tags)[:8]) or 'none'}",
        branch)


def _branch_to_follow(repo: GitRepo, url: str) -> str | None:
    """The branch to check out when the remote's HEAD names none that exists: the only one,
    else ``main``, else ``master``; None for a repository without branches (nothing to check out).

    Raises:
        UnknownRevisionError: several branches, none of them main or master.
    """
    heads = repo.git("for-each-ref", "--format=%(refname:lstrip=3)", "refs/remotes/origin").decode().split()
    heads = [h for h in heads if h != "HEAD"]
    if not heads:
        return None
    if len(heads) == 1:
        return heads[0]
    for name in ("main", "master"):
        if name in heads:
            return name
    raise UnknownRevisionError(f"the HEAD of {url} names no existing branch, and it has several "
                               f"({', '.join(sorted(heads)[:8])}): choose one with -b BRANCH")


def _clone_into(url: str, path: str, branch: str | None, object_store: str | None) -> None:
    if branch:
        _check_branch(url, branch)
    result = subprocess.run(["git", "clone", "-q", "--no-checkout",
                             *(["--branch", branch] if branch else []), "--", url, path],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise GitError(f"git clone {url} failed: {result.stderr.strip()}")
    repo = find_repo(path)
    if not branch and repo.rev_parse("HEAD") is None:
        branch = _branch_to_follow(repo, url)
    init_repo(repo)
    if object_store:
        repo.config_set("modelgit.remote.origin.store", object_store)
    result = subprocess.run(["git", "checkout", "-q", *([branch] if branch else [])],
                            cwd=path, capture_output=True, text=True)
    # an empty repository has nothing to check out
    if result.returncode != 0 and not any(s in result.stderr for s in ("did not match", "unborn",
                                                                       "yet to be born")):
        raise GitError(f"git checkout of {url} failed: {result.stderr.strip()}\nNothing was "
                       "kept; once the cause is fixed, clone again")
