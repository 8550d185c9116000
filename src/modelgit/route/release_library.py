"""The adapter library of a release, from a repository: ``library(repo, rev)``, ``load_release``.

A release records its library in ``releases/<tag>.json`` (written by ``modelgit release``; the
format is in :mod:`modelgit.workflow.library`): the base (a commit's model) and adapters
(``contributions/<name>/`` of that commit, by content id). This module reads that record as a
file (the route layer does not import the workflow) and materializes the directories a
:class:`~.library.Library` needs into a content-addressed cache under
``.git/modelgit/library/``, never inside the work tree:

    base-<fingerprint>/      the base model (checked: its fingerprint is the recorded one)
    adapter-<content id>-<tree>/  a PEFT adapter directory (checked: its content id is review's;
                             the git tree id covers its metadata, which rebase changes)
    router-<git tree id>/    a release's router (router.json + router.safetensors)

Objects missing locally are fetched from the remotes, as checkout does. Every directory is
written under a temporary name, checked, and renamed into place, so a killed process leaves no
half-written entry; a cached entry is checked again before each use (an adapter by its content
id, the base by the sizes and times it was checked with), and rebuilt when it does not match.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass

from ..errors import FormatError, UsageError
from ..git.export import path_problem
from ..untrusted import dumps_json, load_json_file, loads_json
from .library import Library, LibraryAdapter, adapter_content_id, check_adapter_name

__all__ = ["CACHE_STAMP", "ReleaseLibrary", "is_repository", "open_repository", "library",
           "load_release", "read_release", "fetch_adapters", "materialize_library",
           "materialize_tree", "tree_id"]

RELEASES_DIR = "releases"
PROJECT_FILE = "modelgit.yaml"
_MAX_RECORD_BYTES = 16 * 1024 * 1024
_HEX = re.compile(r"^[0-9a-f]{40,64}$")
#: the file a cache entry records its check in (what copies out of the cache leave behind)
CACHE_STAMP = ".modelgit-verified.json"


@dataclass(frozen=True)
class ReleaseLibrary:
    """A release's library record as read from a revision.

    Attributes:
        tag: the release's tag; commit: the commit the record was read from.
        record: the ``library`` of ``releases/<tag>.json`` (checked for shape); None for a
            release without one (read with ``need_library=False``).
    """

    tag: str
    commit: str
    record: dict | None

    @property
    def router(self) -> dict | None:
        return self.record.get("router") if self.record else None


def is_repository(source) -> bool:
    """A :class:`~modelgit.git.repo.GitRepo`, or a directory with ``.git`` and
    ``modelgit.yaml`` (a model repository: the release form of :func:`load`)."""
    from ..git.repo import GitRepo

    if isinstance(source, GitRepo):
        return True
    return (isinstance(source, (str, os.PathLike)) and os.path.isdir(source)
            and os.path.exists(os.path.join(source, ".git"))
            and os.path.isfile(os.path.join(source, PROJECT_FILE)))


def open_repository(source):
    """The :class:`~modelgit.git.repo.GitRepo` of ``source`` (a GitRepo or a model repository's
    directory).

    Raises:
        UsageError: ``source`` is not a model repository (see :func:`is_repository`).
    """
    from ..git.repo import GitRepo

    if isinstance(source, GitRepo):
        return source
    if not is_repository(source):
        raise UsageError(f"{os.fspath(source)!r} is not a modelgit repository (a git work tree "
                         f"with {PROJECT_FILE}): clone the model's repository first")
    from ..git.repo import find_repo

    return find_repo(os.fspath(source))


def _records(repo, rev: str) -> dict[str, dict]:
    """{tag: release record} of ``rev``'s ``releases/``."""
    listing = repo.git("ls-tree", "-z", "--name-only", f"{rev}:{RELEASES_DIR}", check=False).decode()
    out = {}
    for name in filter(None, listing.split("\0")):
        if name.endswith(".json"):
            where = f"{rev}:{RELEASES_DIR}/{name}"
            record = loads_json(repo.read_blob(where) or b"", where, _MAX_RECORD_BYTES)
            if isinstance(record, dict):
                out[name[:-5]] = record
    return out


def _shape_problems(library) -> list[str]:
    if not isinstance(library, dict):
        return ["it is not an object"]
    base = library.get("base")
    problems = []
    if not (isinstance(base, dict) and isinstance(base.get("commit"), str)
            and _HEX.match(base["commit"]) and isinstance(base.get("fingerprint"), str)
            and _HEX.match(base["fingerprint"]) and isinstance(base.get("model"), str)
            and path_problem(base["model"]) is None):
        problems.append("its base is not {commit, fingerprint, model}")
    for entry in library.get("adapters") or []:
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("adapter_id"), str) and _HEX.match(entry["adapter_id"])):
            problems.append(f"adapter entry {str(entry)[:80]!r} lacks a path or content id")
            continue
        try:
            check_adapter_name(entry.get("name"))
        except UsageError as exc:
            problems.append(str(exc))
        problem = path_problem(entry["path"])
        if problem:
            problems.append(f"adapter path {problem}")
    if not isinstance(library.get("adapters"), list) or not isinstance(library.get("refused", []), list):
        problems.append("adapters and refused are not lists")
    return problems


def read_release(repo, rev: str | None = None, need_library: bool = True) -> ReleaseLibrary:
    """The library record of the release at ``rev`` (a tag or commit; None: the newest release
    of HEAD).

    Args:
        need_library: False: a release without a library is returned with ``record`` None
            (for callers that want the release's own weights only).
    Raises:
        UsageError: an unknown revision (naming the closest tag), a revision without a release,
            a release without a library (``need_library``: the first release, made by
            ``modelgit create``, or one of an older modelgit).
        FormatError: a record that is not strict JSON or whose library is malformed.
    """
    repo = open_repository(repo)
    commit = repo.resolve(rev or "HEAD", "--rev")  # an unknown one names the closest tag
    records = _records(repo, commit)
    if not records:
        raise UsageError(f"{rev or 'HEAD'} has no release (no {RELEASES_DIR}/*.json): run "
                         "`modelgit release`, or give --rev TAG")
    if rev in records:
        tag = rev
    else:  # the newest release the revision holds
        tag = max(records, key=lambda t: (str(records[t].get("date") or ""), t))
    library_record = records[tag].get("library")
    if library_record is None:
        if not need_library:
            return ReleaseLibrary(tag, commit, None)
        raise UsageError(f"release {tag} records no adapter library (the base made by "
                         "`modelgit create`, or a release of an older modelgit): the next "
                         "`modelgit release` records one")
    problems = _shape_problems(library_record)
    if problems:
        raise FormatError(f"{commit[:12]}:{RELEASES_DIR}/{tag}.json: its library is malformed: "
                          + "; ".join(problems[:5]))
    return ReleaseLibrary(tag, commit, library_record)


# -- the cache ---------------------------------------------------------------------------------


def _cache_root(repo) -> str:
    root = os.path.join(repo.git_dir, "modelgit", "library")
    os.makedirs(root, exist_ok=True)
    return root


def _stamp(directory: str) -> dict:
    return {name: [os.path.getsize(os.path.join(directory, name)),
                   os.stat(os.path.join(directory, name)).st_mtime_ns]
            for name in sorted(os.listdir(directory)) if name != CACHE_STAMP}


def _cached(repo, key: str, commit: str, path: str, check, progress) -> str:
    """The cache entry ``key``: ``commit:path`` exported, ``check(dir)`` passed (raises when
    not), and stamped; a stamped entry whose files changed since is rebuilt."""
    from ..git.export import export_dir

    root = _cache_root(repo)
    final = os.path.join(root, key)
    stamp = os.path.join(final, CACHE_STAMP)
    if os.path.isfile(stamp):
        try:
            if load_json_file(stamp, stamp, 1024 * 1024) == _stamp(final):
                return final
        except (FormatError, OSError):
            pass
    scratch = tempfile.mkdtemp(prefix=f".{key[:24]}-", dir=root)
    try:
        built = export_dir(repo, commit, path, os.path.join(scratch, "d"), progress=progress)
        check(built)
        with open(os.path.join(built, CACHE_STAMP), "w", encoding="utf-8") as handle:
            handle.write(dumps_json(_stamp(built)))
        if os.path.lexists(final):  # stale or damaged: replaced whole
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(built, final)
        except OSError:  # another process installed it meanwhile: theirs is as good
            if not os.path.isfile(stamp):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def _check_base(fingerprint: str):
    def check(directory: str) -> None:
        from ..fingerprint import fingerprint_dir

        found = fingerprint_dir(directory)
        if found != fingerprint:
            raise UsageError(f"the library's base materialized with fingerprint {found[:16]}..., "
                             f"not the recorded {fingerprint[:16]}...: the release record does "
                             "not match its commit")
    return check


def _check_adapter(name: str, adapter_id: str):
    def check(directory: str) -> None:
        found = adapter_content_id(directory)
        if found != adapter_id:
            raise UsageError(f"adapter {name!r} materialized with content id {found[:16]}..., not "
                             f"the reviewed {adapter_id[:16]}...: its files changed after review; "
                             "review it again")
    return check


def materialize_library(repo, release: ReleaseLibrary, names=None,
                        progress: bool | None = False) -> Library:
    """The :class:`Library` of a release record, its directories in the cache.

    Args:
        names: only these adapters (None: all); an unknown name is an error naming the closest.
    Raises:
        UsageError: an unknown name, a directory that does not match its record, no adapter.
        ObjectMissingError: an object no store has.
    """
    repo = open_repository(repo)
    record = release.record
    base = record["base"]
    entries = [e for e in record.get("adapters") or []]
    if names:
        import difflib

        known = [e["name"] for e in entries]
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1)
                raise UsageError(f"release {release.tag}'s library has no adapter {name!r}"
                                 + (f" (did you mean {close[0]!r}?)" if close else "")
                                 + f": its adapters: {', '.join(known) or 'none'}")
        entries = [e for e in entries if e["name"] in names]
    if not entries:
        raise UsageError(f"release {release.tag}'s library has no adapters"
                         + "".join(f"\n  - {r.get('name')}: {r.get('reason')}"
                                   for r in record.get("refused") or [] if isinstance(r, dict)))
    base_dir = _cached(repo, f"base-{base['fingerprint']}", base["commit"], base["model"],
                       _check_base(base["fingerprint"]), progress)
    adapters = []
    for entry in entries:
        # keyed by the whole directory's git tree too: a rebased adapter keeps its weights (and
        # content id) but records another base in its metadata
        tree = tree_id(repo, base["commit"], entry["path"])
        if tree is None:
            raise UsageError(f"adapter {entry['name']!r}: {entry['path']}/ is not a directory of "
                             f"{base['commit'][:12]}: the release record does not match its commit")
        directory = _cached(repo, f"adapter-{entry['adapter_id']}-{tree}", base["commit"], entry["path"],
                            _check_adapter(entry["name"], entry["adapter_id"]), progress)
        scores = {s: {k: v for k, v in sc.items() if k in ("base", "adapter")}
                  for s, sc in (entry.get("scores") or {}).items() if isinstance(sc, dict)}
        adapters.append(LibraryAdapter(entry["name"], directory, entry.get("domain"),
                                       entry.get("base_fingerprint"), entry["adapter_id"], scores))
    refused = tuple((r.get("name"), r.get("reason")) for r in record.get("refused") or []
                    if isinstance(r, dict))
    checked = Library.from_dirs(base_dir, [(a.name, a.directory) for a in adapters], strict=True)
    # from_dirs checked each adapter's recorded base against the base; keep the record's facts
    return Library(checked.base_dir, checked.base_fingerprint, tuple(adapters), refused)


def library(repo, rev: str | None = None, names=None, progress: bool | None = False) -> Library:
    """The adapter library of the release at ``rev`` (None: the newest), materialized and
    checked (see the module docstring); ``Library.refused`` lists what the release refused."""
    repo = open_repository(repo)
    return materialize_library(repo, read_release(repo, rev), names, progress)


def tree_id(repo, commit: str, path: str) -> str | None:
    """The git tree id of ``commit:path`` (None when it is not a directory there): the key of a
    directory in the cache (equal trees, equal files)."""
    tree = repo.git("rev-parse", "-q", "--verify", f"{commit}:{path}", check=False).decode().strip()
    if tree and repo.git("cat-file", "-t", tree).decode().strip() == "tree":
        return tree
    return None


def materialize_tree(repo, commit: str, path: str, kind: str, check=None,
                     progress: bool | None = False) -> str:
    """The directory ``commit:path`` exported into the repository's cache as
    ``<kind>-<git tree id>/`` (written once, checked, stamped; see the module docstring).

    Args:
        repo: a GitRepo or a model repository's directory.
        kind: the entry's prefix (``model``, ``router``...): letters only.
        check: called with the exported directory before it is installed; raises to refuse it.
    Raises:
        UsageError: ``path`` is not a directory of ``commit``; ``check``'s refusal.
        ObjectMissingError: an object no store has.
    """
    if not kind.isalpha():
        raise ValueError(f"kind {kind!r}: letters only")
    repo = open_repository(repo)
    tree = tree_id(repo, commit, path)
    if tree is None:
        raise UsageError(f"commit {commit[:12]} has no directory {path}/")
    return _cached(repo, f"{kind}-{tree}", commit, path, check or (lambda d: None), progress)


def _router_dir(repo, release: ReleaseLibrary, progress) -> str:
    router = release.router
    if not isinstance(router, dict) or not isinstance(router.get("path"), str):
        raise UsageError(f"release {release.tag} has no router: build one with `modelgit "
                         "release --router KIND` (or `modelgit adapters router build`)")
    tree = tree_id(repo, release.commit, router["path"])
    if tree is None:
        raise UsageError(f"release {release.tag} names the router {router['path']}/, which its "
                         f"commit {release.commit[:12]} does not hold")
    return _cached(repo, f"router-{tree}", release.commit, router["path"], lambda d: None,
                   progress)


def load_release(repo, rev: str | None = None, mode: str | None = None, top_k: int | None = None,
                 threshold: float | None | str = "keep", max_length: int | None = None,
                 progress: bool | None = False):
    """A :class:`~.model.RoutedModel` of the release at ``rev`` (None: the newest): its
    library's base and adapters behind its router (``routers/<tag>/``).

    Raises:
        UsageError: no router in the release; a router built for another base or naming an
            adapter the library lacks (see :func:`~.files.check_against`).
        FormatError: a damaged or hostile router file.
    """
    from .files import load_router
    from .model import RoutedModel
    from .router import Router

    repo = open_repository(repo)
    release = read_release(repo, rev)
    directory = _router_dir(repo, release, progress)
    router = load_router(directory)
    router = Router(router.spec.with_overrides(mode=mode, top_k=top_k, threshold=threshold),
                    router.tensors)
    return RoutedModel(router, materialize_library(repo, release, progress=progress),
                       max_length=max_length,
                       where=f"the router {release.router['path']} of release {release.tag}")


def fetch_adapters(repo, rev: str | None, names=None, output: str = ".", base: bool = False,
                   force: bool = False, progress: bool | None = False) -> dict[str, str]:
    """Write adapters of a release's library as PEFT directories ``OUTPUT/<name>/`` (and the
    library's base as ``OUTPUT/base/`` with ``base``), for transformers + peft.

    Returns:
        {name or "base": directory written}.
    Raises:
        UsageError: an existing target (without ``force``), an unknown name.
    """
    lib = library(repo, rev, names, progress)
    wanted = {a.name: a.directory for a in lib.adapters}
    if base:
        wanted["base"] = lib.base_dir
    os.makedirs(output, exist_ok=True)
    targets = {n: os.path.join(output, n) for n in wanted}
    taken = [t for t in targets.values() if os.path.lexists(t)]
    if taken and not force:
        raise UsageError(f"{', '.join(taken)} exist(s): choose another -o or pass --force")
    for name, source in wanted.items():
        tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=output)
        try:
            staged = os.path.join(tmp, "d")
            shutil.copytree(source, staged, ignore=shutil.ignore_patterns(CACHE_STAMP))
            if os.path.lexists(targets[name]):
                shutil.rmtree(targets[name])
            os.replace(staged, targets[name])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return targets
