"""The ``modelgit`` command line: git-like verbs, each a thin wrapper over a library call."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap

from .. import checkpoint
from .._outputs import check_output
from . import git_commands
from ..errors import ModelgitError, UsageError
from ..store import Store

__all__ = ["main", "build_parser"]

DEFAULT_STORE_DIR = os.path.join(".modelgit", "store")


def find_store_location(explicit: str | None) -> tuple[str, bool]:
    """(location, found): --store, $MODELGIT_STORE, the nearest .modelgit/store up from here,
    or the store of the git repository we are in when `modelgit init` set one up."""
    if explicit:
        return explicit, True
    if os.environ.get("MODELGIT_STORE"):
        return os.environ["MODELGIT_STORE"], True
    here = os.getcwd()
    while True:
        candidate = os.path.join(here, DEFAULT_STORE_DIR)
        if os.path.isdir(candidate):
            return candidate, True
        git_store = os.path.join(here, ".git", "modelgit", "store")
        if os.path.isdir(git_store):
            return git_store, True
        up = os.path.dirname(here)
        if up == here:
            return DEFAULT_STORE_DIR, False
        here = up


def open_store(args, create: bool = False) -> Store:
    location, _ = find_store_location(args.store)
    return Store.open(location, create=create)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _emit(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if getattr(args, "json", False) else text)


# ---------------------------------------------------------------------------- commands
def cmd_add(args) -> int:
    target = args.output or os.path.normpath(args.path) + ".manifest"
    if target != "-":  # before the work: a link, device or directory is refused, not renamed over
        check_output(target, "file", force=True)
    store = open_store(args, create=True)
    parent = None
    if args.parent:
        parent = checkpoint.load_manifest(store, args.parent)
    elif os.path.isfile(target):
        parent = checkpoint.load_manifest(None, target)  # the previous version: delta against it
    ref = args.ref or checkpoint.default_ref(args.path)
    manifest = checkpoint.add(store, args.path, parent=parent, ref=ref, progress=args.progress)
    data = manifest.dumps()
    if target == "-":
        sys.stdout.buffer.write(data)
        return 0
    _atomic_write(target, data)
    history = store.ref_history(ref)
    kept = (f"; its earlier version is kept as {ref}@{{1}} (`modelgit refs --history {ref}`)"
            if len(history) > 1 and history[0].manifest != history[1].manifest else "")
    _emit(args, {"manifest": target, "ref": ref, "id": history[0].manifest,
                 "versions": len(history), "tensors": manifest.tensor_count,
                 "bytes": manifest.logical_bytes},
          f"added {args.path}: {manifest.tensor_count} tensors, {_human(manifest.logical_bytes)}"
          f" -> {target} (manifest {history[0].manifest[:12]}, ref {ref!r} in {store.url}){kept}")
    return 0


def _atomic_write(path: str, data: bytes) -> None:
    from .._files import write_atomic

    write_atomic(path, data)


def cmd_materialize(args) -> int:
    store = open_store(args)
    manifest = checkpoint.load_manifest(store, args.manifest)
    checkpoint.materialize(store, manifest, args.output, force=args.force, progress=args.progress)
    _emit(args, {"output": args.output, "bytes": manifest.logical_bytes},
          f"wrote {args.output} ({_human(manifest.logical_bytes)}, every chunk verified)")
    return 0


def cmd_ls(args) -> int:
    store = None if _is_manifest_file(args.manifest) else _store_if_any(args)
    manifest = checkpoint.load_manifest(store, args.manifest)
    rows = [{"file": f.path, "format": f.format, "name": t.name, "dtype": t.dtype,
             "shape": list(t.shape), "bytes": t.nbytes, "chunks": len(t.chunks)}
            for f in manifest.files for t in f.tensors]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        label = row["name"] or "(file contents)"
        print(f"{row['file']}\t{label}\t{row['dtype']}\t{row['shape']}\t{_human(row['bytes'])}"
              f"\t{row['chunks']} chunk(s)")
    return 0


def _is_manifest_file(path: str) -> bool:
    from ..manifest import is_manifest

    if not os.path.isfile(path):
        return False
    with open(path, "rb") as handle:
        return is_manifest(handle.read(32))


def _store_if_any(args) -> Store | None:
    """The store, or None when there is none yet (a spec then names only manifest files)."""
    location, found = find_store_location(args.store)
    return Store.open(location) if found or "://" in location else None


def cmd_stats(args) -> int:
    report = checkpoint.store_report(open_store(args))
    lines = [f"store            {report.url}",
             f"refs             {len(report.refs)}",
             f"objects          {report.objects}",
             f"logical bytes    {_human(report.logical_bytes)}  (all refs as plain files)",
             f"content bytes    {_human(report.content_bytes)}  (after dedup)",
             f"stored bytes     {_human(report.stored_bytes)}  (after dedup and encoding)"]
    if report.logical_bytes:
        lines.append(f"ratio            {report.stored_bytes / report.logical_bytes:.3f} stored/logical")
    for name, entry in sorted(report.by_encoding.items()):
        lines.append(f"  {name:<8} {entry['objects']:>7} objects  {_human(entry['stored_bytes']):>12}"
                     f" stored for {_human(entry['content_bytes'])}")
    _emit(args, report.as_dict(), "\n".join(lines))
    return 0


def cmd_verify(args) -> int:
    store = open_store(args)
    manifests = {spec: checkpoint.load_manifest(store, spec) for spec in args.manifests} or None
    named = None
    repo = _store_repo(store) if manifests is None else None
    if repo is not None:
        from ..git.history import index_manifests

        named = {f"git index entry {key}": m for key, m in index_manifests(repo).items()}
    problems = checkpoint.verify(store, manifests, named)
    checked = "every object decodes to its id and every ref's manifest has its objects"
    if named is not None:
        checked += ", as does every manifest in git's index"
    _emit(args, {"ok": not problems, "problems": problems},
          "\n".join(problems) if problems else f"ok: {checked}")
    return 1 if problems else 0


def _store_repo(store: Store):
    """The git repository whose store ``store`` is (found from the store's own location, so
    that `modelgit --store .../.git/modelgit/store gc` run elsewhere knows it too), else None."""
    from ..git.repo import find_repo, repo_of_store

    repo = repo_of_store(store.url)
    if repo is not None:
        return repo
    try:
        repo = find_repo(".")
    except ModelgitError:
        return None
    return repo if os.path.realpath(repo.store_path) == os.path.realpath(store.url) else None


def _git_roots(store: Store):
    """When ``store`` is the store of a git repository, a callable giving every manifest git
    can reach (refs, reflogs, every work tree's index)."""
    repo = _store_repo(store)
    if repo is None:
        return None
    from ..git.history import live_manifests

    return lambda: live_manifests(repo)


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """Seconds of a ``--prune`` age: ``now``, or a number with a unit s, m, h, d or w (``2h``).

    Raises:
        UsageError: anything else.
    """
    value = text.strip().lower()
    if value == "now":
        return 0.0
    number, unit = value[:-1], value[-1:]
    try:
        seconds = float(number) * _AGE_UNITS[unit]
    except (KeyError, ValueError):
        seconds = -1.0
    if not seconds >= 0:
        raise UsageError(f"--prune {text!r}: expected 'now' or a number with a unit s, m, h, d or w "
                         "(e.g. 30m, 2h, 1d)")
    return seconds


def cmd_gc(args) -> int:
    store = open_store(args)
    keep = [checkpoint.load_manifest(store, m) for m in args.keep]
    grace = parse_age(args.prune) if args.prune is not None else checkpoint.GC_GRACE_SECONDS
    result = checkpoint.collect_garbage(store, keep, dry_run=args.dry_run,
                                        extra_roots=_git_roots(store), grace_seconds=grace)
    verb = "would remove" if args.dry_run else "removed"
    earlier = sum(max(len(store.ref_history(name)) - 1, 0) for name in store.refs())
    history = (f"; the refs' histories keep {earlier} earlier version(s) (`modelgit refs --history` "
               "lists them, `refs --expire AGE` forgets them)") if earlier else ""
    young = (f" ({result.kept_young} unreferenced but younger than the grace period: "
             "`gc --prune=now` removes them)") if result.kept_young else ""
    _emit(args, result.__dict__,
          f"{verb} {result.removed} objects ({_human(result.freed_bytes)}) and "
          f"{result.removed_tmp} temporary files; kept {result.kept}{young}"
          + (f"; {verb} {result.removed_quarantined} damaged objects from quarantine"
             if result.removed_quarantined else "") + history)
    return 0


def cmd_refs(args) -> int:
    import datetime

    store = open_store(args)
    if args.delete:
        versions = len(store.ref_history(args.delete))
        store.delete_ref(args.delete)
        print(f"deleted ref {args.delete!r} and its history ({versions} version(s)); `modelgit gc` "
              "removes what only they kept")
        return 0
    if args.expire is not None:
        seconds = parse_age(args.expire)
        names = args.names or list(store.refs())
        removed = {name: store.expire_ref_history(name, seconds) for name in names}
        _emit(args, removed, f"forgot {sum(removed.values())} earlier version(s) older than "
              f"{args.expire} of {len(names)} ref(s); `modelgit gc` removes what only they kept")
        return 0
    if args.history:
        rows = []
        for name in args.names or list(store.refs()):
            for index, entry in enumerate(store.ref_history(name)):
                when = datetime.datetime.fromtimestamp(entry.time_ns / 1e9).isoformat(timespec="seconds")
                rows.append({"ref": f"{name}@{{{index}}}", "manifest": entry.manifest, "since": when})
        _emit(args, rows, "\n".join(f"{r['manifest']}  {r['since']}  {r['ref']}" for r in rows)
              or "(no refs)")
        return 0
    refs = {name: oid for name, oid in store.refs().items() if not args.names or name in args.names}
    for name in args.names:
        store.get_ref(name)  # an unknown name is an error that says so
    counts = {name: len(store.ref_history(name)) for name in refs}
    if args.json:  # {name: manifest id}, as always: `refs --history --json` has the versions
        print(json.dumps(refs, indent=2, sort_keys=True))
        return 0
    print("\n".join(f"{oid}  {name}" + (f"  ({counts[name]} versions: `refs --history {name}`)"
                                         if counts[name] > 1 else "")
                    for name, oid in refs.items()) or "(no refs)")
    return 0


# ---------------------------------------------------------------------------- parser
def _command(sub, name, func, help_text, examples):
    parser = sub.add_parser(name, help=help_text, description=help_text,
                            epilog="examples:\n" + textwrap.indent(examples, "  "),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelgit",
        description="Version model checkpoints: a content-addressed, delta-compressed tensor store.")
    parser.add_argument("--store", help="store path or fsspec URL (default: $MODELGIT_STORE or the "
                        "nearest .modelgit/store, created by `add` in the current directory)")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"modelgit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="always show progress bars")
    progress.add_argument("--no-progress", dest="progress", action="store_false",
                          help="never show progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "add", cmd_add, "Add a checkpoint file or directory to the store; write its manifest.",
                 "modelgit add model.safetensors            # writes model.safetensors.manifest\n"
                 "modelgit add ./my-hf-model -o v2.manifest --parent v1.manifest\n"
                 "modelgit --store s3://bucket/models add model.safetensors")
    p.add_argument("path", help="safetensors / .pt / .bin / .npz file, or a directory")
    p.add_argument("-o", "--output", help="manifest file to write ('-' for stdout; default PATH.manifest)")
    p.add_argument("--parent", help="manifest (file, ref or id) of the previous version to delta "
                   "against (default: the existing output manifest, if any)")
    p.add_argument("--ref", help="ref name to record in the store (default: the file's name and "
                   "a hash of its absolute path, e.g. model.safetensors-3f0a9c51e2d4)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _command(sub, "materialize", cmd_materialize, "Rebuild a checkpoint from its manifest.",
                 "modelgit materialize model.safetensors.manifest -o restored.safetensors\n"
                 "modelgit materialize my-hf-model -o ./checkout   # by ref name")
    p.add_argument("manifest", help="manifest file, REF@{N}, ref name, manifest id or a unique "
                   "id prefix (>= 8 hex digits), tried in that order")
    p.add_argument("-o", "--output", required=True, help="file or directory to create")
    p.add_argument("-f", "--force", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--json", action="store_true")

    p = _command(sub, "ls", cmd_ls, "List the tensors of a manifest.",
                 "modelgit ls model.safetensors.manifest\nmodelgit ls --json my-ref")
    p.add_argument("manifest")
    p.add_argument("--json", action="store_true")

    p = _command(sub, "stats", cmd_stats, "Show logical vs stored bytes of the store.",
                 "modelgit stats\nmodelgit --store /data/store stats --json")
    p.add_argument("--json", action="store_true")

    p = _command(sub, "verify", cmd_verify, "Decode and hash-check objects (exit 1 on any problem).",
                 "modelgit verify                      # every object, every ref's objects\n"
                 "modelgit verify model.safetensors.manifest  # what one manifest needs")
    p.add_argument("manifests", nargs="*", help="only the objects these manifests need")
    p.add_argument("--json", action="store_true")

    p = _command(sub, "gc", cmd_gc, "Delete objects no ref reaches, and leftover temporary files.",
                 "modelgit gc --dry-run\nmodelgit gc --keep old.manifest\n"
                 "modelgit gc --prune=now     # also objects written in the last hour")
    p.add_argument("--keep", action="append", default=[], help="also keep this manifest's objects")
    p.add_argument("--prune", metavar="AGE", help="delete unreferenced objects only when older "
                   "than AGE: 'now' or e.g. 30m, 2h, 1d (default 1h: a git command may still be "
                   "about to commit younger ones)")
    p.add_argument("-n", "--dry-run", action="store_true", help="only report")
    p.add_argument("--json", action="store_true")

    p = _command(sub, "refs", cmd_refs, "List the store's refs and their histories (every manifest "
                 "a ref pointed at, kept by gc), forget old versions, or delete a ref.",
                 "modelgit refs\nmodelgit refs --history model.safetensors-3f0a9c51e2d4\n"
                 "modelgit materialize model.safetensors-3f0a9c51e2d4@{1} -o previous.safetensors\n"
                 "modelgit refs --expire 30d     # forget versions older than 30 days, then gc\n"
                 "modelgit refs --delete old-model")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these refs")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--history", action="store_true",
                        help="list every version (NAME@{N}, newest first)")
    action.add_argument("--expire", metavar="AGE", help="forget the versions older than AGE "
                        "('now', 30m, 2h, 7d...), never the current one")
    action.add_argument("--delete", metavar="NAME", help="delete a ref and its history")
    p.add_argument("--json", action="store_true")

    from . import (export_commands, federate_commands, library_commands,  # (see main: not for git's filter)
                   merge_commands, predict_commands, route_commands, serve_commands,
                   train_commands, workflow_commands)

    git_commands.register(sub, _command)
    merge_commands.register(sub, _command)
    train_commands.register(sub, _command)

    workflow_commands.register(sub, _command)
    route_commands.register(sub, _command)
    library_commands.register(sub, _command)
    export_commands.register(sub, _command)
    serve_commands.register(sub, _command)
    predict_commands.register(sub, _command)
    federate_commands.register(sub, _command)

    return parser


def _setup_logging() -> None:
    """``MODELGIT_LOG=FILE`` appends what the filter, hooks and drivers do (they run inside git)."""
    target = os.environ.get("MODELGIT_LOG")
    if target:
        import logging

        handler = logging.FileHandler(target)
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s: %(message)s"))
        logging.getLogger("modelgit").addHandler(handler)
        logging.getLogger("modelgit").setLevel(logging.INFO)


def _output_closed() -> int:
    """Whoever read our output stopped (``modelgit ls M | head``): stop quietly, as git and cat
    do. stdout is pointed at /dev/null so that the interpreter's last flush at exit does not
    fail again; the exit code is the shell's for a process ended by SIGPIPE."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 141


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["filter-process"]:
        # git starts the filter for every command that touches tracked files: it skips building
        # the parser of every verb (and importing their modules), a tenth of its start-up
        args = argparse.Namespace(func=git_commands.cmd_filter_process, debug=False)
        # the filter runs its own threads; OpenBLAS's (numpy's dot product of a chunk) would spin
        # on the same cores (2-4% of a checkout's samples): one BLAS thread, set before numpy loads
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            os.environ.setdefault(name, "1")
    else:
        args = build_parser().parse_args(argv)
    _setup_logging()
    debug = args.debug or os.environ.get("MODELGIT_DEBUG") == "1"
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
        return code
    except ModelgitError as exc:
        if debug:
            raise
        print(f"modelgit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("modelgit: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _output_closed()
    except OSError as exc:
        if debug:
            raise
        print(f"modelgit: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001  a bug: one line, the traceback only when asked
        if debug:
            raise
        print(f"modelgit: internal error: {type(exc).__name__}: {str(exc)[:500]} (a modelgit bug: "
              "run again with --debug for the traceback and report it)", file=sys.stderr)
        return 1
