"""``modelgit install``: set modelgit up for every repository of a user, as ``git lfs install`` does.

``modelgit init`` writes the filter, diff and merge drivers into one repository's config. With
``install`` they go into the user's global git config (``git config --global``; ``--local`` for
the current repository only), so that a plain ``git clone`` of a modelgit repository checks out
real checkpoints (fetching their objects from the remote's object store), and ``git pull``,
``git checkout``, ``git diff`` and every other git tool just work.

Hooks cannot be global (``core.hooksPath`` would replace every repository's own hooks, and is
the user's to set), so the pre-push hook that uploads objects is installed per repository, the
way git-lfs does it: by ``install`` itself when run inside a repository, and by the filter
process the first time git runs it in a repository (the checkout of a clone, or the first
``git add`` of a tracked file) when that repository has no pre-push hook. A hook of the user's
is never touched automatically (``modelgit init`` chains it), nor one in a ``core.hooksPath``
directory: those repositories push objects with ``modelgit push``.

Uninstalling removes only what modelgit wrote: keys whose value is still modelgit's, sections
left empty, and a pre-push hook written by modelgit (the user's own hook, if it had been chained,
is put back).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from ..errors import UsageError
from .repo import FILTER_NAME, GitError, GitRepo
from .setup import HOOK_MARKER, HOOKS, config_items, hooks_dir, install_hook

__all__ = ["install", "uninstall", "ensure_hooks", "InstallReport"]

_SECTIONS = (f"filter.{FILTER_NAME}", f"diff.{FILTER_NAME}", f"merge.{FILTER_NAME}")


@dataclass(frozen=True)
class InstallReport:
    """What ``install`` or ``uninstall`` did: one line per change, and what it left alone."""
    scope: str  # "global" or "local"
    done: tuple[str, ...]
    kept: tuple[str, ...] = ()


def _config(scope: str, repo: GitRepo | None, *args: str, check: bool = True) -> str:
    cwd = repo.root if repo is not None else os.getcwd()
    result = subprocess.run(["git", "config", f"--{scope}", *args], cwd=cwd,
                            capture_output=True, text=True)
    if check and result.returncode not in (0, 1):  # 1: no such key (for --get, --unset)
        raise GitError(f"git config --{scope} {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip() if result.returncode == 0 else ""


def _is_ours(key: str, value: str) -> bool:
    """Whether ``value`` is what modelgit writes for ``key`` (from any interpreter's path)."""
    expected = config_items()[key]
    marker = " -m modelgit "
    if marker in expected:
        return value.endswith(expected.split(marker, 1)[1]) and "modelgit" in value
    return value == expected


def install(scope: str = "global", repo: GitRepo | None = None, force: bool = False) -> InstallReport:
    """Write the filter, diff and merge drivers into the ``global`` (or ``local``) git config,
    and the pre-push hook into ``repo`` when given (idempotent).

    Raises:
        UsageError: a key already holds a value that is not modelgit's (without ``force``), or
            ``local`` outside a repository.
    """
    if scope == "local" and repo is None:
        raise UsageError("`modelgit install --local` sets up the current repository, but this "
                         "is not inside a git repository: cd into one, or drop --local")
    items = config_items()
    foreign = []
    for key in items:
        current = _config(scope, repo, "--get", key)
        if current and not _is_ours(key, current):
            foreign.append(f"{key} = {current}")
    if foreign and not force:
        raise UsageError(f"the {scope} git config already sets " + "; ".join(foreign) +
                         ", which modelgit did not write: remove it, or run `modelgit install "
                         f"{'--local ' if scope == 'local' else ''}--force` to replace it")
    done = []
    for key, value in items.items():
        if _config(scope, repo, "--get", key) != value:
            _config(scope, repo, "--replace-all", key, value)
            done.append(f"set {key} ({scope})")
    if repo is not None:
        for name in HOOKS:
            action = install_hook(hooks_dir(repo), name)
            if action:
                done.append(action)
    return InstallReport(scope, tuple(done))


def uninstall(scope: str = "global", repo: GitRepo | None = None) -> InstallReport:
    """Remove from the ``global`` (or ``local``) git config the keys modelgit wrote (those whose
    value is still modelgit's), then empty sections, and the pre-push hook modelgit wrote in
    ``repo`` when given (putting back a hook it had chained)."""
    if scope == "local" and repo is None:
        raise UsageError("`modelgit install --local --uninstall` works inside a git repository; "
                         "cd into one, or drop --local")
    done, kept = [], []
    for key in config_items():
        current = _config(scope, repo, "--get", key)
        if not current:
            continue
        if _is_ours(key, current):
            _config(scope, repo, "--unset-all", key)
            done.append(f"removed {key} ({scope})")
        else:
            kept.append(f"{key} = {current} (not modelgit's)")
    for section in _SECTIONS:
        if not _config(scope, repo, "--get-regexp", "^" + section.replace(".", r"\.") + r"\."):
            _config(scope, repo, "--remove-section", section, check=False)
    if repo is not None:
        for name in HOOKS:
            action = _remove_hook(hooks_dir(repo), name)
            if action:
                done.append(action)
    return InstallReport(scope, tuple(done), tuple(kept))


def _remove_hook(directory: str, name: str) -> str | None:
    path = os.path.join(directory, name)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            if HOOK_MARKER not in handle.read():
                return None
    except FileNotFoundError:
        return None
    chained = os.path.join(directory, f"{name}.before-modelgit")
    if os.path.exists(chained):
        os.replace(chained, path)
        return f"removed hook {name} (your previous hook is back in its place)"
    os.unlink(path)
    return f"removed hook {name}"


def ensure_hooks(repo: GitRepo) -> list[str]:
    """Install modelgit's hooks into ``repo`` where it has none (the filter process calls this,
    so that a repository cloned with modelgit installed globally pushes its objects).

    A hook of the user's is left alone, and so is a ``core.hooksPath`` directory (shared by
    repositories: the user's to manage). Returns what was installed; never raises for a hook.
    """
    default = os.path.join(repo.git_dir, "hooks")
    if all(_is_modelgit_hook(os.path.join(default, name)) for name in HOOKS):
        return []  # the usual case: one stat and read each, no git command
    directory = hooks_dir(repo)
    if os.path.realpath(directory) != os.path.realpath(default):
        return []  # core.hooksPath: not ours to write into
    done = []
    for name in HOOKS:
        path = os.path.join(directory, name)
        if os.path.exists(path) and not _is_modelgit_hook(path):
            continue
        try:
            action = install_hook(directory, name)
        except OSError:
            continue
        if action:
            done.append(action)
    return done


def _is_modelgit_hook(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return HOOK_MARKER in handle.read(4096)
    except OSError:
        return False
