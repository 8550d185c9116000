"""``modelgit init`` and ``modelgit track``: wire modelgit into one repository.

Everything goes into the repository's own config (never the global one), so a repository that
was not initialised is untouched, and CI machines need no global state (``modelgit install``,
in :mod:`.install`, is the opt-in for every repository of a user). Hooks already present are
kept: an existing hook is moved aside and called first by a small wrapper.
"""

from __future__ import annotations

import os
import shlex
import sys

from .repo import FILTER_NAME, GitRepo

__all__ = ["init_repo", "track", "modelgit_command", "config_items", "hooks_dir", "install_hook",
           "ATTRIBUTES", "HOOKS", "HOOK_MARKER"]

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

    Args:
        object_store: the remote's object store URL, when it is not the local remote's own
            (saved as ``modelgit.remote.origin.store``).
    Raises:
        GitError: git clone or checkout failed.
    """
    import subprocess

    from .repo import GitError, find_repo

    result = subprocess.run(["git", "clone", "-q", "--no-checkout",
                             *(["--branch", branch] if branch else []), url, target],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise GitError(f"git clone {url} failed: {result.stderr.strip()}")
    repo = find_repo(target)
    if not branch and repo.rev_parse("HEAD") is None:
        heads = repo.git("branch", "-r", "--format=%(refname:lstrip=3)").decode().split()
        heads = [h for h in heads if h != "HEAD"]
        if heads:
            raise GitError(f"the remote's HEAD names no existing branch, so nothing would be "
                           f"checked out: pass a branch ({', '.join(heads[:5])})")
    init_repo(repo)
    if object_store:
        repo.config_set("modelgit.remote.origin.store", object_store)
    result = subprocess.run(["git", "checkout", "-q", *([branch] if branch else [])],
                            cwd=target, capture_output=True, text=True)
    # an empty repository has nothing to check out
    if result.returncode != 0 and not any(s in result.stderr for s in ("did not match", "unborn",
                                                                       "yet to be born")):
        raise GitError(f"git checkout in {target} failed: {result.stderr.strip()}\nThe repository "
                       f"is cloned; once the cause is fixed, `git checkout -f HEAD` in {target} "
                       "writes the work tree")
    return repo
