"""Small helpers over the git command line: where the repository is, its config, its objects."""

from __future__ import annotations

import difflib
import os
import re
import subprocess
from dataclasses import dataclass

from ..errors import ModelgitError, UnknownRevisionError, UsageError
from ..manifest import Manifest, is_manifest
from ..store import Store

__all__ = ["GitRepo", "GitError", "FILTER_NAME", "find_repo", "repo_of_store",
           "unknown_revision_message"]

FILTER_NAME = "modelgit"
# manifests are small; a blob larger than this is a plain file, not a manifest
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


class GitError(ModelgitError):
    """A git command failed."""


def _git(args: list[str], cwd: str, input: bytes | None = None, check: bool = True) -> bytes:
    env = dict(os.environ)
    # our own filter must not run inside git commands we start to read objects
    result = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, env=env)
    if check and result.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


@dataclass
class GitRepo:
    root: str  # the work tree's top directory (or the git dir of a bare repository)
    git_dir: str  # the common git directory (shared by all work trees)

    def git(self, *args: str, input: bytes | None = None, check: bool = True) -> bytes:
        return _git(list(args), self.root, input, check)

    def config_get(self, key: str, default: str | None = None) -> str | None:
        out = _git(["config", "--get", key], self.root, check=False).decode().strip()
        return out or default

    def config_set(self, key: str, value: str) -> None:
        self.git("config", "--local", key, value)

    @property
    def store_path(self) -> str:
        return os.path.join(self.git_dir, "modelgit", "store")

    def store(self) -> Store:
        return Store.open(self.store_path, create=True)

    def rev_parse(self, rev: str) -> str | None:
        """The commit id ``rev`` names, or None. ``--end-of-options`` keeps a revision that
        starts with ``-`` from ever being read as an option of git's."""
        if not rev or "\0" in rev:
            return None
        out = _git(["rev-parse", "--verify", "-q", "--end-of-options", rev + "^{commit}"],
                   self.root, check=False)
        return out.decode().strip() or None

    def resolve(self, rev: str, what: str = "revision") -> str:
        """The commit id ``rev`` names.

        Args:
            what: how the revision was given, for the message (``"--onto"``, ``"revision"``).
        Raises:
            UnknownRevisionError: ``rev`` names no commit; the message names the closest branch
                or tag, or how far back the history goes for ``REV~N``.
        """
        commit = self.rev_parse(rev)
        if commit is None:
            raise UnknownRevisionError(unknown_revision_message(self, rev, what), rev)
        return commit

    def ref_names(self) -> dict[str, list[str]]:
        """Short names of the branches, remote branches and tags, for suggestions."""
        out = _git(["for-each-ref", "--format=%(refname)", "refs/heads", "refs/remotes", "refs/tags"],
                   self.root, check=False).decode().split()
        names: dict[str, list[str]] = {"branches": [], "tags": []}
        for ref in out:
            for prefix, kind in (("refs/heads/", "branches"), ("refs/remotes/", "branches"),
                                 ("refs/tags/", "tags")):
                if ref.startswith(prefix) and not ref.endswith("/HEAD"):
                    names[kind].append(ref[len(prefix):])
        return names

    def read_blob(self, spec: str) -> bytes | None:
        """Contents of ``REV:PATH`` (or a blob id), or None when it does not exist."""
        result = subprocess.run(["git", "cat-file", "blob", spec], cwd=self.root, capture_output=True)
        return result.stdout if result.returncode == 0 else None

    def manifest_at(self, rev: str, path: str) -> Manifest | None:
        """The manifest tracked at ``rev:path``, or None (absent, or not a modelgit file)."""
        data = self.read_blob(f"{rev}:{path}")
        if data is None or not is_manifest(data):
            return None
        return Manifest.loads(data, f"{rev}:{path}")

    def tracked_manifests(self, rev: str, paths: list[str] | None = None) -> dict[str, Manifest]:
        """Every modelgit manifest in the tree of ``rev`` (optionally below ``paths``)."""
        if rev.startswith("-"):  # never an option of git's (``--end-of-options`` would take ``--`` as a path)
            raise UnknownRevisionError(f"unknown revision {rev!r}", rev)
        out = self.git("ls-tree", "-r", "-z", "--long", rev, "--", *(paths or []))
        candidates = []
        for entry in out.split(b"\0"):
            if not entry:
                continue
            meta, path = entry.split(b"\t", 1)
            mode, kind, oid, size = meta.split()
            if kind == b"blob" and size.isdigit() and int(size) < MAX_MANIFEST_BYTES:
                candidates.append((path.decode(), oid.decode()))
        return self.read_manifests(candidates)

    def read_manifests(self, candidates: list[tuple[str, str]]) -> dict[str, Manifest]:
        """{path: manifest} for the (path, blob id) pairs whose blobs are manifests."""
        if not candidates:
            return {}
        request = "".join(f"{oid}\n" for _, oid in candidates).encode()
        out = self.git("cat-file", "--batch", input=request)
        manifests, position = {}, 0
        for path, _oid in candidates:
            newline = out.index(b"\n", position)
            header = out[position:newline].split()
            size = int(header[2])
            data = out[newline + 1:newline + 1 + size]
            position = newline + 1 + size + 1
            if is_manifest(data):
                manifests[path] = Manifest.loads(data, path)
        return manifests


# REV~N, REV^, REV^N, REV@{...}: the part before the first of these is the name
_SUFFIX = re.compile(r"^(?P<base>[^~^@]+)(?P<suffix>(?:[~^]\d*|@\{[^}]*\})+)$")


def unknown_revision_message(repo: GitRepo, rev: str, what: str = "revision") -> str:
    """Why ``rev`` names nothing, and what does exist: the closest branch or tag, or, for
    ``HEAD~99``, how far back the history goes."""
    head = f"unknown {what} {rev!r}"
    if repo.rev_parse("HEAD") is None and not any(repo.ref_names().values()):
        return f"{head}: the repository has no commits yet"
    match = _SUFFIX.match(rev)
    if match and repo.rev_parse(match["base"]):
        base, suffix = match["base"], match["suffix"]
        if suffix.startswith("@{"):
            return f"{head}: {base} has no such reflog entry (`git reflog {base}` lists them)"
        count = int(_git(["rev-list", "--first-parent", "--count", repo.rev_parse(base)],
                         repo.root).decode().strip() or 0)
        depth = (f"{base} is a root commit (no parent)" if count <= 1 else
                 f"{base} has {count} commits on its first-parent line, so the oldest is "
                 f"{base}~{count - 1}")
        return f"{head}: {depth}" + ("" if suffix.startswith("~") else
                                     "; REV^N also needs a merge commit with N parents")
    names = repo.ref_names()
    every = names["branches"] + names["tags"]
    close = difflib.get_close_matches(match["base"] if match else rev, every, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = "; ".join(f"{kind}: {', '.join(sorted(items)[:8])}{', ...' if len(items) > 8 else ''}"
                       for kind, items in names.items() if items)
    return f"{head}{hint}; {listed or 'no branches or tags'} (or a commit id)"


def find_repo(path: str = ".") -> GitRepo:
    """The git repository containing ``path`` (a work tree or a bare repository).

    Raises:
        UsageError: not inside a git repository.
    """
    result = subprocess.run(["git", "rev-parse", "--is-bare-repository", "--git-common-dir"],
                            cwd=path, capture_output=True)
    if result.returncode != 0:
        raise UsageError(f"{os.path.abspath(path)} is not inside a git repository; run `git init` "
                         "first (or cd into one)")
    bare, common = result.stdout.decode().splitlines()
    common = os.path.abspath(os.path.join(path, common))
    if bare == "true":
        return GitRepo(common, common)
    top = _git(["rev-parse", "--show-toplevel"], path).decode().strip()
    return GitRepo(top, common)


def repo_of_store(location: str) -> GitRepo | None:
    """The git repository whose object store is at ``location`` (``<git dir>/modelgit/store``),
    wherever the command runs from; None for any other store. Its git commands run in the git
    directory itself, which git accepts for everything that reads objects, refs and indexes."""
    if "://" in location and not location.startswith("file://"):
        return None
    path = os.path.realpath(location[len("file://"):] if location.startswith("file://") else location)
    modelgit_dir = os.path.dirname(path)
    if os.path.basename(path) != "store" or os.path.basename(modelgit_dir) != "modelgit":
        return None
    git_dir = os.path.dirname(modelgit_dir)
    if not (os.path.isfile(os.path.join(git_dir, "HEAD")) and os.path.isdir(os.path.join(git_dir, "objects"))):
        return None
    return GitRepo(git_dir, git_dir)
