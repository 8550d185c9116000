"""CLI verbs of the git integration: init, track, clone, fetch, push, diff, log, and the entry
points git itself calls (filter-process, git-diff, merge-driver, pre-push)."""

from __future__ import annotations

import json
import os
import sys

from ..git import setup
from ..git.repo import find_repo

# diff, history and merge_driver compute on tensors and import torch (a second): they are
# imported inside the commands that need them, so that git's filter process starts fast.

__all__ = ["register"]


def _human(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def cmd_init(args) -> int:
    repo = find_repo(".")
    done = setup.init_repo(repo)
    print("\n".join(done) if done else "modelgit is already set up in this repository")
    print(f"objects are stored in {repo.store_path}; track files with `modelgit track '*.safetensors'`")
    return 0


def cmd_install(args) -> int:
    from ..git import install

    repo = _repo_or_none()
    scope = "local" if args.local else "global"
    if args.uninstall:
        report = install.uninstall(scope, repo)
        for line in report.done + tuple(f"kept {k}" for k in report.kept):
            print(line)
        if not report.done:
            print(f"nothing of modelgit's in the {scope} git config" +
                  (" or this repository's hooks" if repo else ""))
        return 0
    report = install.install(scope, repo, force=args.force)
    print("\n".join(report.done) if report.done else f"modelgit is already installed ({scope})")
    if scope == "global" and report.done:
        print("git clone, checkout, pull, diff and merge now use modelgit in every repository "
              "that tracks files with it; the pre-push hook that uploads objects is installed "
              "per repository" + (" (in this one now; " if repo else " (") +
              "in others by the first checkout or add)")
    return 0


def _repo_or_none():
    from ..errors import UsageError

    try:
        return find_repo(".")
    except UsageError:
        return None


def cmd_track(args) -> int:
    repo = find_repo(".")
    added = setup.track(repo, args.patterns)
    for pattern in args.patterns:
        print(f"{'tracking' if pattern in added else 'already tracked'}: {pattern}")
    if added:
        print("commit .gitattributes (`git add .gitattributes`) so that clones track them too")
    return 0


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed chunk buffers for reuse instead of returning them to the kernel:
    the filter allocates and frees several 4 MiB buffers per chunk, and on a VM whose free pages
    go back to the host, touching fresh pages again costs ~2.5-3 s per GB."""
    import ctypes

    if os.environ.get("MODELGIT_MALLOC") == "default":
        return
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on (find_library forks ldconfig)
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MiB of free heap
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: chunk buffers from the heap, not mmap
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def cmd_filter_process(args) -> int:
    from ..git import filter_process

    _keep_freed_memory()
    repo = find_repo(".")
    # a large read buffer: one read(2) per 16 packets of a checkpoint instead of two per packet
    with open(sys.stdin.fileno(), "rb", buffering=1 << 20, closefd=False) as stdin:
        return filter_process.serve(repo, stdin, sys.stdout.buffer)


def cmd_pre_push(args) -> int:
    from ..git import history

    repo = find_repo(".")
    lines = sys.stdin.read().splitlines()
    result = history.pre_push(repo, args.remote, lines, progress=None)
    if result.objects:
        print(f"modelgit: uploaded {result.objects} objects ({_moved(result)}) to the object "
              f"store of {args.remote}; {result.skipped} were already there{_replaced(result)}",
              file=sys.stderr)
    return 0


def _moved(result) -> str:
    """``12.0 MiB``, and how many objects were hard-linked rather than copied."""
    return _human(result.bytes) + (f", {result.linked} hard-linked" if result.linked else "")


def _replaced(result) -> str:
    text = (f"; {result.replaced} damaged copies on the remote were replaced" if result.replaced
            else "")
    if result.reencoded:
        text += (f"; {result.reencoded} older versions there were re-encoded as deltas on the "
                 "new ones")
    return text


def cmd_push(args) -> int:
    from ..git import history

    repo = find_repo(".")
    result = history.push_rev(repo, args.remote, args.rev, progress=args.progress,
                              verify_remote=args.verify_remote)
    checked = " (verified)" if args.verify_remote else ""
    print(f"uploaded {result.objects} objects ({_moved(result)}); {result.skipped} already "
          f"there{checked}{_replaced(result)}")
    return 0


def cmd_fetch(args) -> int:
    from ..git import history

    repo = find_repo(".")
    paths = [os.path.relpath(os.path.abspath(p), repo.root).replace(os.sep, "/") for p in args.paths]
    result = history.fetch_rev(repo, args.rev, args.remote, paths or None, progress=args.progress,
                               check_paths=True)
    print(f"fetched {result.objects} objects ({_moved(result)}); {result.skipped} already here")
    return 0


def cmd_checkout(args) -> int:
    from ..git import worktree

    repo = find_repo(".")
    paths = [os.path.relpath(os.path.abspath(p), repo.root) for p in args.paths]
    results = worktree.checkout_pointers(repo, paths or None, progress=args.progress)
    for result in results:
        if result.repaired:
            print(f"modelgit: {result.repaired}", file=sys.stderr)
        if result.filled:
            print(f"wrote {result.path}")
        elif result.failed:
            print(f"modelgit: could not write {result.path}: {result.reason}", file=sys.stderr)
    if not results:
        print("no tracked file holds a manifest: the work tree is complete")
    return 1 if any(result.failed for result in results) else 0


def cmd_clone(args) -> int:
    target = args.directory or os.path.basename(args.url.rstrip("/")).removesuffix(".git")
    setup.clone(args.url, target, args.branch)
    print(f"cloned {args.url} into {target} (modelgit set up; tensors fetched on checkout)")
    return 0


def _known_path(repo, rel: str, revs: list[str]) -> bool:
    """Whether the repository-relative ``rel`` is in the work tree or in one of ``revs``."""
    if os.path.lexists(os.path.join(repo.root, rel)):
        return True
    return any(repo.git("ls-tree", "--name-only", repo.resolve(rev), "--", rel,
                        check=False).strip() for rev in revs)


def _split_revs(repo, items: list[str], max_revs: int = 2) -> tuple[list[str], list[str]]:
    """(revisions, repository-relative paths) of ``[REV...] [PATH...]``, as git reads them:
    each leading item that names a commit is a revision (at most ``max_revs``), the rest are
    paths, which must exist in the work tree or in one of the revisions (HEAD when none).

    Raises:
        UnknownRevisionError: an item in a revision's place is neither a revision nor a path
            (naming the closest branch or tag, or how far back ``REV~N`` can go).
        UsageError: a path exists nowhere, or lies outside the repository.
    """
    from ..errors import UnknownRevisionError, UsageError
    from ..git.repo import unknown_revision_message

    revs: list[str] = []
    paths: list[str] = []
    for item in items:
        if not paths and len(revs) < max_revs and repo.rev_parse(item):
            revs.append(item)
            continue
        rel = os.path.relpath(os.path.abspath(item), repo.root).replace(os.sep, "/")
        if rel == ".." or rel.startswith("../"):
            raise UsageError(f"{item!r} is outside the repository at {repo.root}")
        if not _known_path(repo, rel, revs or (["HEAD"] if repo.rev_parse("HEAD") else [])):
            if not paths and len(revs) < max_revs:
                raise UnknownRevisionError(unknown_revision_message(repo, item, "revision or path"),
                                           item)
            raise UsageError(f"{item!r}: no such path in the work tree or in "
                             f"{', '.join(revs or ['HEAD'])}")
        paths.append(rel)
    return revs, paths


def cmd_diff(args) -> int:
    from ..git import diff as diffmod
    from ..git import history

    repo = find_repo(".")
    revs, paths = _split_revs(repo, args.items)
    old, new = (revs + [None, None])[:2] if revs else ("HEAD", None)
    diffs = history.diff_revs(repo, old, new, paths or None)
    if args.json:
        print(json.dumps([d.as_dict() for d in diffs], indent=2))
    else:
        print("\n\n".join(diffmod.format_diff(d, args.top) for d in diffs) or "no model changes")
    return 0


def cmd_git_diff(args) -> int:
    """git's external diff driver: path old-file old-hex old-mode new-file new-hex new-mode."""
    from .. import checkpoint
    from ..git import diff as diffmod
    from ..manifest import Manifest

    repo = find_repo(".")
    store = repo.store()

    def load(path: str, blob: str):
        """The manifest of one side: from git's blob when there is one (git hands the driver
        smudged checkpoints, which would have to be hashed again), else from the file."""
        if path == "/dev/null":
            return None
        if blob and set(blob) != {"0"} and blob != ".":
            data = repo.read_blob(blob)
            if data is not None and data.startswith(b"modelgit-manifest "):
                return Manifest.loads(data, blob)
        with open(path, "rb") as handle:
            head = handle.read(32)
        if head.startswith(b"modelgit-manifest "):
            return checkpoint.load_manifest(None, path)
        with store.writing():
            return checkpoint.add(store, path, progress=False)

    if len(args.args) < 7:  # git passes only the path for an unmerged file
        print(f"* Unmerged path {args.args[0]} (modelgit)")
        return 0
    path, old_file, old_hex, _old_mode, new_file, new_hex, _new_mode = args.args[:7]
    print(f"diff --modelgit a/{path} b/{path}")
    for d in diffmod.diff_manifests(store, path, load(old_file, old_hex), load(new_file, new_hex)):
        print(diffmod.format_diff(d))
    return 0


def cmd_merge_driver(args) -> int:
    from ..git import merge_driver

    repo = find_repo(".")
    return merge_driver.run_merge_driver(repo, args.base, args.ours, args.theirs, args.path)


def cmd_log(args) -> int:
    from ..git import history

    repo = find_repo(".")
    revs, paths = _split_revs(repo, args.items, max_revs=1)
    entries = history.log_path(repo, paths or None, args.max_count, rev=(revs or ["HEAD"])[0])
    if args.json:
        print(json.dumps([{"commit": e.commit, "author": e.author, "date": e.date, "subject": e.subject,
                           "recipe": e.recipe, "files": [d.as_dict() for d in e.diffs]} for e in entries],
                         indent=2))
        return 0
    for e in entries:
        print(f"commit {e.commit[:12]}  {e.date}  {e.author}\n    {e.subject}")
        if e.recipe:
            print(f"    recipe: {e.recipe}")
        for d in e.diffs:
            counts = d.counts()
            rel = d.rel_l2()  # the same file-wide figure as `modelgit diff` shows
            parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if k != "unchanged")
            print(f"    {d.path}: {parts or 'no tensor changed'}"
                  + (f"; file-wide rel.L2 {rel:.3g}" if rel else ""))
        print()
    return 0


def register(sub, command) -> None:
    """Add the git verbs to the CLI's subparsers (``command`` makes one with help and examples)."""
    p = command(sub, "init", cmd_init, "Set up modelgit in this git repository (filter, diff and "
                "merge drivers in .git/config; a pre-push hook).", "modelgit init")
    p = command(sub, "install", cmd_install, "Set modelgit up for every repository of this user "
                "(filter, diff and merge drivers in the global git config, like `git lfs "
                "install`), so that plain git clone, pull and checkout write checkpoints. Opt-in; "
                "--local for this repository only; --uninstall removes what it wrote.",
                "modelgit install\nmodelgit install --local\nmodelgit install --uninstall")
    p.add_argument("--local", action="store_true", help="this repository's config, not the "
                   "global one")
    p.add_argument("--uninstall", action="store_true", help="remove what modelgit wrote (keys "
                   "still holding modelgit's values, and its pre-push hook here)")
    p.add_argument("--force", action="store_true", help="replace filter/diff/merge settings of "
                   "the same names that modelgit did not write")
    p = command(sub, "track", cmd_track, "Track files matching patterns with modelgit (.gitattributes).",
                "modelgit track '*.safetensors'\nmodelgit track 'adapters/**/*.safetensors' '*.bin'")
    p.add_argument("patterns", nargs="+")
    p = command(sub, "clone", cmd_clone, "git clone + modelgit init + checkout (tensors fetched "
                "from the remote's object store).", "modelgit clone /srv/models/base.git work")
    p.add_argument("url")
    p.add_argument("directory", nargs="?")
    p.add_argument("-b", "--branch")
    p = command(sub, "fetch", cmd_fetch, "Prefetch the objects a revision needs (each verified "
                "before it is kept; delta ancestors missing here are fetched too).",
                "modelgit fetch            # HEAD\nmodelgit fetch v2 --remote upstream")
    p.add_argument("rev", nargs="?", default="HEAD")
    p.add_argument("paths", nargs="*")
    p.add_argument("--remote")
    p = command(sub, "checkout", cmd_checkout, "Write the checkpoints of tracked files that still "
                "hold their manifest (after an interrupted checkout or MODELGIT_SKIP_SMUDGE=1).",
                "modelgit checkout\nmodelgit checkout model/model.safetensors")
    p.add_argument("paths", nargs="*")
    p = command(sub, "push", cmd_push, "Upload the objects a revision needs to a remote's object store "
                "(git push does it for you through the pre-push hook). Every object is verified "
                "before it is uploaded; a remote copy whose size differs from the local one is "
                "verified and replaced when damaged.",
                "modelgit push origin\n"
                "modelgit push origin v2 --verify-remote   # check every remote copy, replace damaged ones")
    p.add_argument("remote", nargs="?", default="origin")
    p.add_argument("rev", nargs="?", default="HEAD")
    p.add_argument("--verify-remote", action="store_true",
                   help="download and verify every copy the remote already has (not only those "
                   "whose size differs), replacing damaged ones")
    p = command(sub, "diff", cmd_diff, "Tensor-level diff between revisions (default HEAD vs work tree).",
                "modelgit diff HEAD~1 HEAD\nmodelgit diff v1 v2 model.safetensors --json")
    p.add_argument("items", nargs="*", metavar="REV|PATH")
    p.add_argument("--json", action="store_true")
    p.add_argument("--top", type=int, default=10, help="rows of layers and tensors to show")
    p = command(sub, "log", cmd_log, "History of model files: what changed per commit, with recipes.",
                "modelgit log\nmodelgit log model.safetensors -n 5 --json\nmodelgit log v2 model/")
    p.add_argument("items", nargs="*", metavar="REV|PATH",
                   help="a revision whose history to list (default HEAD), then paths")
    p.add_argument("-n", "--max-count", type=int, default=20)
    p.add_argument("--json", action="store_true")
    # called by git, not by people
    p = sub.add_parser("filter-process")
    p.set_defaults(func=cmd_filter_process)
    p = sub.add_parser("pre-push")
    p.add_argument("remote")
    p.add_argument("url", nargs="?")
    p.set_defaults(func=cmd_pre_push)
    p = sub.add_parser("git-diff")
    p.add_argument("args", nargs="+")
    p.set_defaults(func=cmd_git_diff)
    p = sub.add_parser("merge-driver")
    for name in ("base", "ours", "theirs", "path"):
        p.add_argument(name)
    p.set_defaults(func=cmd_merge_driver)
