"""Reading a contribution out of git's object database, trusting nothing it says.

A contribution branch is built by a stranger, with ``modelgit contribute`` or with git plumbing
(``hash-object``, ``mktree``, ``commit-tree``): tree entries named ``..`` or ``.git``, symbolic
links, submodules, executables, duplicate names, an earlier commit that edits ``modelgit.yaml``
under a clean tip, merges, huge blobs, manifests naming objects nobody has. :func:`receive` reads
it without a work tree and never joins a name the contributor chose onto a path:

1. **The range.** The base is the tip's merge base with HEAD, and it must lie on HEAD's
   first-parent line. Every commit from the base to the tip has exactly one parent and changes
   nothing but the contribution's area ``<contributions>/<name>/``: trees are compared entry by
   entry along the area's path, so no name trick (``a/../..``, a duplicate entry, a name with a
   slash) can hide a change elsewhere. At most :data:`MAX_RANGE_COMMITS` commits.
2. **The area**, in every commit of the range: a flat directory of regular files (mode 100644)
   whose names a contribution may hold (:func:`~.validate.file_problem`), each once.
3. **The tip's files.** Sizes come from ``git cat-file --batch-check`` before a byte is read;
   blobs are written into a fresh directory that modelgit created, each file created exclusively
   and never through a link. The adapter's weights may be a manifest (as ``contribute`` commits
   them): a single safetensors file within the project's size limit, materialized from the store
   after its objects are fetched.

What review merges afterwards is the area's tree object read here: exactly what was validated.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

from ..errors import FormatError, ManifestError
from ..git.repo import GitRepo
from ..manifest import Manifest, is_manifest
from ..untrusted import loads_json
from .contribution import CONTRIBUTION_FILE
from .gitops import path_problem, write_new_file
from .validate import ADAPTER_FILES, METADATA_FILES, ContributionError, file_problem

__all__ = ["MAX_RANGE_COMMITS", "AREA_FILES", "Entry", "Received", "area_problems", "receive"]

#: a contribution is one commit (``contribute``); a few more are tolerated, not hundreds
MAX_RANGE_COMMITS = 20
#: what the area of a contribution may hold
AREA_FILES = (*ADAPTER_FILES, *METADATA_FILES, CONTRIBUTION_FILE)
_WEIGHTS = "adapter_model.safetensors"
#: a manifest of one adapter file is a few lines per tensor; a blob larger than this is not one
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, order=True)
class Entry:
    """One entry of a git tree (``name`` decoded from UTF-8, undecodable bytes kept escaped)."""

    name: str
    mode: str
    kind: str
    oid: str


@dataclass(frozen=True)
class Received:
    """A contribution read and checked (see the module docstring)."""

    base: str  # the commit of the main line it was built on
    commits: tuple[str, ...]  # base..tip, oldest first
    tree: str  # the area's tree object at the tip: what is validated and what gets merged
    directory: str  # the files of that tree, but contribution.json (written by modelgit)
    record: dict  # contribution.json, parsed strictly (its fields are checked by the caller)


def _tree(repo: GitRepo, oid: str | None) -> list[Entry]:
    if oid is None:
        return []
    out = repo.git("ls-tree", "-z", "--full-tree", oid)
    entries = []
    for item in filter(None, out.split(b"\0")):
        meta, name = item.split(b"\t", 1)
        mode, kind, object_id = meta.decode().split()
        entries.append(Entry(name.decode("utf-8", errors="surrogateescape"), mode, kind, object_id))
    return entries


def _subtree(entries: list[Entry], name: str) -> str | None:
    found = [e for e in entries if e.name == name]
    return found[0].oid if len(found) == 1 and found[0].kind == "tree" else None


def _changes_outside(repo: GitRepo, old: str | None, new: str | None, parts: list[str],
                     prefix: str = "") -> list[str]:
    """Names of what differs between the trees ``old`` and ``new`` (None: empty) anywhere but
    along the path ``parts`` (the area, whose own content is checked by :func:`area_problems`)."""
    if not parts:
        return []
    old_entries, new_entries = _tree(repo, old), _tree(repo, new)
    head = parts[0]
    before = Counter(e for e in old_entries if e.name != head)
    after = Counter(e for e in new_entries if e.name != head)
    changed = sorted({e.name for e in (before - after) + (after - before)})
    out = [path for name in changed
           for path in _changed_below(repo, before, after, name, f"{prefix}{name}")]
    mine = [e for e in new_entries if e.name == head]
    if len(mine) > 1 or (mine and mine[0].kind != "tree"):
        out.append(f"{prefix}{head} (not one directory)")
        return out
    return out + _changes_outside(repo, _subtree(old_entries, head),
                                  mine[0].oid if mine else None, parts[1:], f"{prefix}{head}/")


def _changed_below(repo: GitRepo, before: Counter, after: Counter, name: str, path: str) -> list[str]:
    """The changed files below ``path`` when it is one directory on both sides (for the
    message: ``model/config.json`` says more than ``model``), else ``[path]``."""
    old = [e for e in before if e.name == name]
    new = [e for e in after if e.name == name]
    if len(old) == len(new) == 1 and old[0].kind == new[0].kind == "tree":
        inner = repo.git("diff-tree", "-r", "--name-only", "--no-renames", "-z", old[0].oid, new[0].oid)
        names = [p.decode("utf-8", errors="surrogateescape") for p in inner.split(b"\0") if p]
        return [f"{path}/{p}" for p in names[:10]] or [path]
    return [path]


def _show(path: str) -> str:
    return path if path.isprintable() else repr(path)


def _area_tree(repo: GitRepo, commit: str, parts: list[str]) -> str | None:
    oid = repo.git("rev-parse", "--verify", "-q", f"{commit}^{{tree}}").decode().strip()
    for part in parts:
        oid = _subtree(_tree(repo, oid), part)
        if oid is None:
            return None
    return oid


def _mode_problem(entry: Entry) -> str | None:
    if entry.kind == "blob" and entry.mode == "100644":
        return None
    what = {"120000": "a symbolic link", "160000": "a submodule (gitlink)", "040000": "a directory",
            "100755": "an executable file"}.get(entry.mode, f"an entry of mode {entry.mode}")
    return f"{entry.name[:100]!r}: {what}; a contribution is a flat directory of plain files"


def area_problems(entries: list[Entry], where: str = "") -> list[str]:
    """Why a contribution area holding ``entries`` (one git tree, not recursed) is refused:
    unsafe names, anything but regular files, names a contribution may not hold, duplicates."""
    problems = []
    for name, count in sorted(Counter(e.name for e in entries).items()):
        if count > 1:
            problems.append(f"{where}{name[:100]!r} appears {count} times in one directory")
    for entry in sorted(entries):
        problem = path_problem(entry.name) or _mode_problem(entry)
        if problem is None and entry.name != CONTRIBUTION_FILE:
            problem = file_problem(entry.name)
        if problem:
            problems.append(where + problem)
    return problems


def _range(repo: GitRepo, head: str, tip: str, parts: list[str]) -> tuple[str | None, list, list]:
    """(base, [(commit, parent)] oldest first, problems) of the commits base..tip."""
    base = repo.git("merge-base", head, tip, check=False).decode().strip() or None
    if base is None:
        return None, [], ["the branch shares no history with the main line: contribute on top of "
                          "a revision of this repository (`modelgit contribute`)"]
    if base == tip:
        return base, [], ["the branch adds no commit on top of the main line"]
    listing = repo.git("rev-list", "--parents", f"--max-count={MAX_RANGE_COMMITS + 1}", tip,
                       f"^{base}").decode().split("\n")
    commits = [line.split() for line in listing if line.strip()]
    if len(commits) > MAX_RANGE_COMMITS:
        return base, [], [f"the branch has more than {MAX_RANGE_COMMITS} commits on top of the main "
                          "line: contribute it as one commit (`modelgit contribute`)"]
    problems = [f"the branch holds a merge commit ({len(c) - 1} parents); a contribution is a "
                "line of commits on top of a base revision" for c in commits if len(c) != 2]
    first_parent = repo.git("rev-list", "--first-parent", head).decode().split()
    if base not in first_parent:
        problems.append(f"the branch is built on {base[:12]}, which is not a revision of the main "
                        "line (HEAD's first parents): contribute on top of one")
    pairs = [(c[0], c[1]) for c in reversed(commits) if len(c) == 2]
    for number, (commit, parent) in enumerate(pairs, start=1):
        # commits are named by their place in the range: an id in the blind report would let
        # the reviewer look the branch up
        label = "its commit" if len(pairs) == 1 else f"commit {number} of {len(pairs)}"
        old_root = repo.git("rev-parse", f"{parent}^{{tree}}").decode().strip()
        new_root = repo.git("rev-parse", f"{commit}^{{tree}}").decode().strip()
        outside = _changes_outside(repo, old_root, new_root, parts)
        if outside:
            area = "/".join(parts) + "/"
            problems.append(f"{label} changes paths outside the contribution area "
                            f"{area}: {', '.join(_show(p) for p in outside[:5])}"
                            f"{' ...' if len(outside) > 5 else ''}")
        area_tree = _area_tree(repo, commit, parts)
        if area_tree is not None:
            problems.extend(area_problems(_tree(repo, area_tree), f"{label}: "))
    return base, [c for c, _ in pairs], problems


def _sizes(repo: GitRepo, oids: list[str]) -> dict[str, int | None]:
    """{blob id: size}, None for an object this repository does not have."""
    out = repo.git("cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)",
                   input="".join(f"{oid}\n" for oid in oids).encode()).decode().splitlines()
    sizes: dict[str, int | None] = {}
    for oid, line in zip(oids, out):
        fields = line.split()
        sizes[oid] = int(fields[2]) if len(fields) == 3 and fields[1] == "blob" else None
    return sizes


def _materialize(repo: GitRepo, data: bytes, target: str, limits, where: str) -> None:
    from .. import checkpoint
    from ..git.transfer import fetch_objects, remotes_for_fetch

    try:
        manifest = Manifest.loads(data, where)
    except ManifestError as exc:
        raise ContributionError(where, [f"{_WEIGHTS}: {exc}"]) from None
    if manifest.root != "file" or manifest.files[0].format != "safetensors":
        raise ContributionError(where, [f"{_WEIGHTS}: its manifest does not describe one "
                                        "safetensors file"])
    if manifest.logical_bytes > limits.max_adapter_bytes:
        raise ContributionError(where, [
            f"{_WEIGHTS} holds {manifest.logical_bytes / 2**20:.1f} MiB of tensors, over the "
            f"project's limit of {limits.max_adapter_mb:g} MiB (modelgit.yaml limits.max_adapter_mb)"])
    store = repo.store()
    fetch_objects(store, remotes_for_fetch(repo), manifest.object_ids(), progress=False,
                  context=where)
    checkpoint.materialize(store, manifest, target, progress=False, sync=False)


def receive(repo: GitRepo, area_parts: list[str], tip: str, head: str, dest: str, limits
            ) -> Received:
    """Check the contribution whose branch points at ``tip`` and write its files to ``dest``.

    Args:
        area_parts: the area's path, e.g. ``["contributions", "alice-lora"]`` (the maintainer's
            project settings and a checked name; never read from the contribution).
        head: the main line's commit it is reviewed against.
        dest: a directory modelgit just created, empty.
        limits: the project's :class:`~.project.Limits` (sizes).
    Returns:
        A :class:`Received`; ``dest`` holds every file of the area but ``contribution.json``.
    Raises:
        ContributionError: listing every reason to refuse it.
        ObjectMissingError: the adapter's manifest names an object no store has.
    """
    where = "/".join(area_parts)
    base, commits, problems = _range(repo, head, tip, area_parts)
    if problems:
        raise ContributionError(where, problems)
    tree = _area_tree(repo, tip, area_parts)
    entries = _tree(repo, tree)
    if tree is None or not entries:
        raise ContributionError(where, [f"nothing under {where}/ at its tip"])
    sizes = _sizes(repo, [e.oid for e in entries])
    for entry in entries:
        limit = limits.max_adapter_bytes if entry.name == _WEIGHTS else limits.max_metadata_kb * 1024
        if sizes[entry.oid] is None:
            problems.append(f"{entry.name}: its blob {entry.oid[:12]} is not in this repository")
        elif sizes[entry.oid] > limit:
            problems.append(f"{entry.name}: {sizes[entry.oid]} bytes, over the project's limit of "
                            f"{limit} bytes (modelgit.yaml limits)")
    if problems:
        raise ContributionError(where, problems)
    record: dict = {}
    for entry in entries:
        data = repo.git("cat-file", "blob", entry.oid)
        if entry.name == CONTRIBUTION_FILE:
            try:
                record = loads_json(data, f"{where}/{CONTRIBUTION_FILE}", limits.max_metadata_kb * 1024)
            except FormatError as exc:
                raise ContributionError(where, [str(exc)]) from None
        elif entry.name == _WEIGHTS and is_manifest(data):
            if len(data) > _MAX_MANIFEST_BYTES:
                raise ContributionError(where, [f"{_WEIGHTS}: a manifest of {len(data)} bytes, "
                                                "too large for one adapter file"])
            _materialize(repo, data, os.path.join(dest, _WEIGHTS), limits, f"{where}/{_WEIGHTS}")
        else:  # a name from AREA_FILES (checked above), never the contributor's own string
            write_new_file(os.path.join(dest, AREA_FILES[AREA_FILES.index(entry.name)]), data)
    if not isinstance(record, dict) or not record:
        raise ContributionError(where, [f"{CONTRIBUTION_FILE} is missing or not a JSON object "
                                        "(`modelgit contribute` writes it)"])
    return Received(base, tuple(commits), tree, dest, record)
