"""Writing checkpoints into the work tree without passing them through git.

git buffers a smudge filter's whole output in memory before it writes the file, and hands an
external diff driver both sides smudged into temporary files. For a checkpoint of several GB
that is the memory and most of the time of a checkout or a ``git diff``. So, when the git
command that started the filter is one that writes the work tree (checkout, switch, reset,
merge, ...), the filter answers git with the manifest itself (a few KB) and remembers the path;
when git has finished (it closes the filter's pipe and waits for the filter to exit), each
remembered file that still holds exactly that manifest is replaced by its checkpoint, streamed
from the store to a temporary file and renamed over it. For ``diff``/``log``/``show`` the
manifest alone is what the diff driver reads. For any other command (``archive``,
``cat-file --filters``, or when the command cannot be told) the filter streams the checkpoint
to git as before, which is always correct.

A file left as a manifest (an interrupted checkout, ``MODELGIT_SKIP_SMUDGE=1``) is filled in by
``modelgit checkout [PATH...]``; ``git status`` shows it unmodified meanwhile, because cleaning a
manifest gives the manifest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from dataclasses import dataclass

from .. import checkpoint
from ..errors import ModelgitError, StoreFullError, UsageError
from ..manifest import Manifest, is_manifest
from . import index_stat
from .repo import FILTER_NAME, MAX_MANIFEST_BYTES, GitRepo

__all__ = ["STREAM", "DEFER", "POINTER", "SKIP", "smudge_mode", "git_subcommand", "fill", "check_space",
           "pointer_paths", "FillResult"]

# STREAM: the checkpoint through git; DEFER: the manifest, the checkpoint written when git is
# done; POINTER: the manifest, with the objects fetched (for a diff driver); SKIP: the manifest
STREAM, DEFER, POINTER, SKIP = "stream", "defer", "pointer", "skip"
# commands whose smudged output is the work-tree file itself
WRITES_WORKTREE = frozenset({
    "checkout", "switch", "restore", "reset", "stash", "merge", "pull", "rebase", "cherry-pick",
    "revert", "am", "clone", "worktree", "read-tree", "sparse-checkout", "bisect"})
# commands that smudge only to hand the result to a diff driver, which reads manifests
DIFF_ONLY = frozenset({"diff", "log", "show", "whatchanged"})
# global git options followed by a separate value
_OPTIONS_WITH_VALUE = frozenset({"-C", "-c", "--git-dir", "--work-tree", "--namespace",
                                 "--super-prefix", "--config-env", "--list-cmds"})
# the mtime given to a filled file: in an earlier second than the index written after it, or
# git (which compares whole seconds unless built with USE_NSEC) finds the entry racily clean
# and reads the file again; older than RACY_NS, so that the stat cache trusts it too
_MTIME_BACKDATE_NS = 2_000_000_000


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    return int(data[data.rindex(b")") + 2:].split()[1])  # field 4, after "(comm) state"


def git_subcommand(argv: list[str]) -> str | None:
    """``checkout`` for ``git -C dir -c k=v checkout -q main``; None when argv is not git's."""
    if not argv or os.path.basename(argv[0]) != "git":
        return None
    args = iter(argv[1:])
    for arg in args:
        if arg in _OPTIONS_WITH_VALUE:
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def _invoking_git_command() -> str | None:
    """The subcommand of the git process that started this filter (through ``sh -c``)."""
    try:
        pid = os.getppid()
        for _ in range(3):  # git → sh -c → us, and git's own dashed helpers
            command = git_subcommand(_cmdline(pid))
            if command is not None:
                return command
            pid = _parent(pid)
            if pid <= 1:
                return None
    except (OSError, ValueError, IndexError):
        return None  # no /proc (macOS) or the parent is gone
    return None


def smudge_mode() -> str:
    """How this filter process answers smudge requests: STREAM, DEFER, POINTER or SKIP.

    ``MODELGIT_SMUDGE=stream`` forces streaming through git; ``MODELGIT_SKIP_SMUDGE=1`` leaves
    manifests in the work tree (fill them in later with ``modelgit checkout``).
    """
    if os.environ.get("MODELGIT_SMUDGE") == STREAM:
        return STREAM
    if os.environ.get("MODELGIT_SKIP_SMUDGE") == "1":
        return SKIP
    command = _invoking_git_command()
    if command in WRITES_WORKTREE:
        return DEFER
    if command in DIFF_ONLY:
        return POINTER
    return STREAM


def check_space(repo: GitRepo, path: str, manifest: Manifest) -> None:
    """Refuse early (git then reports the path) when the checkpoint cannot fit on the disk."""
    directory = os.path.dirname(os.path.join(repo.root, path)) or repo.root
    while not os.path.isdir(directory) and directory != os.path.dirname(directory):
        directory = os.path.dirname(directory)
    free = shutil.disk_usage(directory).free
    if free < manifest.logical_bytes:
        raise StoreFullError(
            f"{path} needs {manifest.logical_bytes / 2**20:.0f} MiB but only {free / 2**20:.0f} MiB "
            "are free; free some space and check it out again")


@dataclass
class FillResult:
    path: str
    filled: bool
    reason: str = ""  # why it was skipped or failed
    failed: bool = False  # it should have been written but could not be (``reason`` says why)
    repaired: str = ""  # damaged or missing local objects were fetched again (what was done)


def fill(repo: GitRepo, path: str, data: bytes | None = None) -> FillResult:
    """Replace the work-tree file ``path`` by its checkpoint if it holds a manifest.

    Args:
        data: the manifest git was given for ``path``; the file is replaced only when it still
            holds exactly these bytes (the same path may have been smudged for another purpose,
            such as ``git checkout-index --prefix``). None: any manifest in the file.
    """
    full = os.path.join(repo.root, path)
    try:
        before = os.lstat(full)
        if not stat.S_ISREG(before.st_mode) or (data is not None and before.st_size != len(data)) \
                or before.st_size > MAX_MANIFEST_BYTES:
            return FillResult(path, False, "not a manifest")
        with open(full, "rb") as handle:
            current = handle.read()
    except FileNotFoundError:
        return FillResult(path, False, "not in the work tree")
    if (data is not None and current != data) or not is_manifest(current):
        return FillResult(path, False, "not a manifest")
    from .transfer import retry_after_repair

    store = repo.store()
    manifest = Manifest.loads(current, path)
    # written beside it, then swapped in by unlink + rename: a rename over an existing file
    # makes ext4 (auto_da_alloc) start writing the new file back at once, ~0.3 s per GB
    written = os.path.join(os.path.dirname(full), f".{os.path.basename(full)}.modelgit-fill")
    notes: list[str] = []
    # a damaged local object is moved to quarantine by the read that finds it: fetched again here
    retry_after_repair(repo, store, manifest.object_ids(), path, lambda: checkpoint.materialize(
        store, manifest, written, force=True, progress=False, sync=False,
        mode=stat.S_IMODE(before.st_mode)), notes.append)
    now = time.time_ns() - _MTIME_BACKDATE_NS
    os.utime(written, ns=(now, now))
    os.unlink(full)
    os.rename(written, full)
    checkpoint.remember_record(store, full, os.stat(full), manifest.files[0])
    return FillResult(path, True, repaired="; ".join(notes))


def fill_all(repo: GitRepo, pending: dict[str, bytes]) -> list[FillResult]:
    """Fill every remembered path, then make git look at them again; a failure is reported
    and the rest go on."""
    results = []
    for path, data in pending.items():
        try:
            results.append(fill(repo, path, data))
        except (ModelgitError, OSError) as exc:
            results.append(FillResult(path, False, str(exc), failed=True))
    filled = {r.path: pending[r.path] for r in results if r.filled}
    if filled:
        refresh_index(repo, filled)
    return results


def _blob_id(algorithm: str, data: bytes) -> str:
    return hashlib.new(algorithm, b"blob %d\0" % len(data) + data).hexdigest()


def refresh_index(repo: GitRepo, files: dict[str, bytes]) -> None:
    """Make git's index describe files that now hold their checkpoint instead of the manifest
    git wrote (git takes a different size for a modification without reading the file).

    Only entries that are merged (stage 0) and record exactly that manifest are touched, so
    conflicts and staged changes stay as they are. The new stat data is written into the index
    (``index_stat``); where that cannot be done, the stat data is cleared instead, and the next
    git command reads each file once more (the filter's stat cache answers without hashing).
    """
    listed = repo.git("--literal-pathspecs", "ls-files", "-s", "-z", "--", *files).split(b"\0")
    algorithm = index_stat.object_format(repo)
    entries = {}
    for entry in filter(None, listed):
        meta, path = entry.decode().split("\t", 1)
        mode, oid, stage = meta.split()
        if stage == "0" and path in files and oid == _blob_id(algorithm, files[path]):
            entries[path] = (mode, oid)
    if not entries or index_stat.record_stat(repo, {p: oid for p, (_, oid) in entries.items()},
                                                algorithm):
        return
    lines = [f"{mode} {oid}\t{path}" for path, (mode, oid) in entries.items()]
    repo.git("update-index", "-z", "--index-info", input="\0".join(lines).encode() + b"\0")


def pointer_paths(repo: GitRepo, paths: list[str] | None = None) -> list[str]:
    """Files tracked by modelgit's filter (below ``paths``) whose work-tree copy holds a manifest."""
    out = repo.git("ls-files", "-z", "--", *(paths or []))
    listed = [p for p in out.split(b"\0") if p]
    if not listed:
        return []
    attrs = repo.git("check-attr", "-z", "--stdin", "filter", input=b"\0".join(listed) + b"\0")
    fields = attrs.split(b"\0")  # path, attribute, value, path, ...
    candidates = [fields[i].decode() for i in range(0, len(fields) - 2, 3)
                  if fields[i + 2] == FILTER_NAME.encode()]
    found = []
    for path in candidates:
        full = os.path.join(repo.root, path)
        try:
            if os.path.getsize(full) > MAX_MANIFEST_BYTES:
                continue
            with open(full, "rb") as handle:
                head = handle.read(32)
        except OSError:
            continue
        if is_manifest(head):
            found.append(path)
    return found


def checkout_pointers(repo: GitRepo, paths: list[str] | None = None,
                      progress: bool | None = None) -> list[FillResult]:
    """``modelgit checkout``: fetch what they need and fill in the files left as manifests.

    Args:
        paths: work-tree paths (relative to the repository root) or directories; None: all.
    Returns:
        One result per file; one that could not be written (its objects are on no remote, or
        damaged there; it does not fit on the disk) has ``failed`` set, the others are written
        all the same.
    Raises:
        UsageError: a path is not tracked in the work tree (a typo, or a revision given in the
            place of a path).
    """
    from .transfer import fetch_missing

    for path in paths or []:
        if not repo.git("ls-files", "-z", "--", path).strip(b"\0"):
            hint = (f"; to switch the work tree to revision {path!r}, run `git checkout {path}`"
                    if repo.rev_parse(path) else "")
            raise UsageError(f"{path!r} is no file or directory tracked in this repository's "
                             f"work tree (`git ls-files` lists them){hint}")
    store = repo.store()
    pending, failed = {}, []
    for path in pointer_paths(repo, paths):
        with open(os.path.join(repo.root, path), "rb") as handle:
            data = handle.read()
        try:
            manifest = Manifest.loads(data, path)
            fetch_missing(repo, store, manifest.object_ids(), path, progress)
            check_space(repo, path, manifest)
        except ModelgitError as exc:
            failed.append(FillResult(path, False, str(exc), failed=True))
            continue
        pending[path] = data
    return failed + fill_all(repo, pending)
