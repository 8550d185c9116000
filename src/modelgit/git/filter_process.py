"""git's long-running filter process (``filter.modelgit.process``) for clean and smudge.

One process serves every file of a git command. Clean turns a checkpoint streamed from git into
its manifest, storing the chunks as they arrive (no temporary copy, no whole file in memory);
smudge turns a manifest back into the checkpoint, fetching missing objects from the object
remotes first and streaming the bytes to git chunk by chunk.

* A file whose stat matches the stat cache is not re-hashed: its input is drained and the
  cached manifest returned.
* Content that already is a manifest passes through clean unchanged, and content that is not a
  manifest passes through smudge unchanged (a file committed before it was tracked).
* Errors are answered with ``status=error`` (git then fails for that path) and explained on
  stderr, which git shows to the user.
* For commands that write the work tree, smudge answers with the manifest and fills the files in
  when git is done (see ``worktree``): git never holds a checkpoint in memory.
* From its first clean until git closes the pipe, the process holds the store lock shared:
  git records the manifests clean returns only once every file is cleaned, and ``gc`` (which
  takes the lock exclusively) must not delete their objects before (see ``_StoreHold``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from typing import BinaryIO

from .. import checkpoint
from ..errors import ModelgitError
from ..manifest import MAGIC, Manifest, is_manifest
from . import worktree
from .pktline import ContentStream, PktReader, PktWriter, ProtocolError
from .repo import GitRepo
from .transfer import fetch_missing

__all__ = ["serve", "clean", "prepare_smudge", "smudge"]

_PEEK = len(MAGIC) + 1
log = logging.getLogger("modelgit.filter")


class _Prefixed:
    """A stream with some bytes already read from it put back in front."""

    def __init__(self, prefix: bytes, rest):
        self.prefix, self.rest = prefix, rest

    def read(self, n: int = -1) -> bytes:
        if not self.prefix:
            return self.rest.read(n)
        if n < 0:
            data, self.prefix = self.prefix + self.rest.read(-1), b""
            return data
        head, self.prefix = self.prefix[:n], self.prefix[n:]
        return head + (self.rest.read(n - len(head)) if len(head) < n else b"")

    def readinto_exact(self, buffer) -> int:
        """Fill ``buffer`` (fewer bytes only at the end of the content); returns the count."""
        view = memoryview(buffer).cast("B")
        head, self.prefix = self.prefix[:len(view)], self.prefix[len(view):]
        view[:len(head)] = head
        return len(head) + (self.rest.readinto_exact(view[len(head):]) if len(head) < len(view) else 0)


def _previous_record(repo: GitRepo, path: str):
    """The manifest of ``path`` in the index, else in HEAD: the parent for delta encoding."""
    for spec in (f":{path}", f"HEAD:{path}"):
        data = repo.read_blob(spec)
        if data is not None and is_manifest(data):
            try:
                return Manifest.loads(data, spec).files[0]
            except ModelgitError:
                return None
    return None


def clean(repo: GitRepo, path: str, content: ContentStream) -> bytes:
    """The manifest bytes for checkpoint bytes streamed from git for ``path``."""
    store = repo.store()
    full = os.path.join(repo.root, path)
    started_ns = time.time_ns()
    before = os.stat(full) if os.path.isfile(full) else None
    if before is not None:
        cached = checkpoint.cached_record(store, full, os.path.basename(path))
        if cached is not None:
            content.drain()
            log.info("clean %s: unchanged since it was last cleaned (stat cache), not re-hashed", path)
            return Manifest((cached,), "file").dumps()
    head = content.read(_PEEK)
    if is_manifest(head):  # already clean (e.g. checked out before `modelgit init`)
        data = head + content.read(-1)
        Manifest.loads(data, path)
        return data
    parent = _previous_record(repo, path)
    manifest = checkpoint.add_stream(store, _Prefixed(head, content), os.path.basename(path),
                                     parent=parent, progress=False)
    log.info("clean %s: hashed and stored (%d tensors, delta parent: %s)", path,
             len(manifest.files[0].tensors), "yes" if parent else "no")
    if before is not None:
        after = os.stat(full)
        unchanged = (after.st_mtime_ns, after.st_size, after.st_ino) == \
            (before.st_mtime_ns, before.st_size, before.st_ino)
        if unchanged and started_ns - after.st_mtime_ns > checkpoint.RACY_NS:
            checkpoint.remember_record(store, full, after, manifest.files[0])
    return manifest.dumps()


def prepare_smudge(repo: GitRepo, path: str, data: bytes):
    """Parse the manifest and fetch what the store lacks; returns (store, manifest)."""
    manifest = Manifest.loads(data, path)
    store = repo.store()
    result = fetch_missing(repo, store, manifest.object_ids(), path)
    if result is not None:
        log.info("smudge %s: fetched %d objects (%d bytes, %d hard-linked)", path, result.objects,
                 result.bytes, result.linked)
    return store, manifest


def smudge(store, manifest: Manifest, writer: PktWriter) -> None:
    """Stream the checkpoint of ``manifest`` to git (status already sent by the caller)."""
    buffer = bytearray()
    for piece in checkpoint.iter_file_bytes(store, manifest.files[0]):
        buffer += memoryview(piece).cast("B")
        if len(buffer) >= 1 << 20:
            writer.content(buffer)
            buffer = bytearray()
    writer.content(buffer)


def _handshake(reader: PktReader, writer: PktWriter) -> None:
    welcome = reader.read_text_list()
    if not welcome or welcome[0] != "git-filter-client" or "version=2" not in welcome[1:]:
        raise ProtocolError(f"unexpected filter handshake {welcome!r}")
    writer.text("git-filter-server")
    writer.text("version=2")
    writer.flush()
    capabilities = reader.read_text_list()
    for capability in ("clean", "smudge"):
        if f"capability={capability}" in capabilities:
            writer.text(f"capability={capability}")
    writer.flush()


def _report(path: str, exc: BaseException) -> None:
    if isinstance(exc, ModelgitError) and os.environ.get("MODELGIT_DEBUG") != "1":
        print(f"modelgit: {path}: {exc}", file=sys.stderr)
    else:
        print(f"modelgit: {path}: unexpected error:\n{traceback.format_exc()}", file=sys.stderr)


def _respond(writer: PktWriter, status: str, content: bytes | None = None) -> None:
    """A whole answer: status, then (on success) the content and the empty trailing list."""
    writer.text(f"status={status}")
    writer.flush()
    if status == "success":
        writer.content(content or b"")
        writer.flush()
        writer.flush()  # keep status=success


def _fill_pending(repo: GitRepo, pending: dict[str, bytes]) -> int:
    """Write the checkpoints of the deferred smudges; 1 when one could not be written."""
    failed = 0
    for result in worktree.fill_all(repo, pending):
        if result.repaired:
            print(f"modelgit: {result.repaired}", file=sys.stderr)
        if result.filled:
            log.info("smudge %s: checkpoint written into the work tree", result.path)
        elif result.failed:
            failed += 1
            print(f"modelgit: {result.path}: could not write the checkpoint ({result.reason}); "
                  "the file holds its manifest for now: fix the cause and run "
                  f"`modelgit checkout {result.path}`", file=sys.stderr)
    return 1 if failed else 0


class _StoreHold:
    """The store lock, held shared from the first clean until the filter process ends.

    Clean stores objects and returns a manifest; git writes that manifest into its index (or a
    commit) only later, once every file is cleaned, and then closes the filter's pipe. Until
    then the objects are referenced by nothing ``gc`` can see, so this process keeps ``gc``
    (which takes the lock exclusively) waiting until git is done. Objects freshly written are
    also protected by gc's grace period, for writers that cannot hold a lock that long.
    """

    def __init__(self, repo: GitRepo):
        self._repo, self._held = repo, None

    def acquire(self) -> None:
        if self._held is None:
            held = self._repo.store().backend.lock(shared=True)
            held.__enter__()
            self._held = held

    def release(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            held.__exit__(None, None, None)


def serve(repo: GitRepo, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Run the filter protocol until git closes the pipe (then fill in deferred checkouts)."""
    _ensure_hooks(repo)
    hold = _StoreHold(repo)
    try:
        return _serve(repo, stdin, stdout, hold)
    finally:
        hold.release()


def _ensure_hooks(repo: GitRepo) -> None:
    """With modelgit installed globally (``modelgit install``), the first filter run in a
    repository (the checkout of a clone, a first ``git add``) installs the pre-push hook that
    uploads objects, as git-lfs does; see :func:`~modelgit.git.install.ensure_hooks`."""
    from .install import ensure_hooks

    try:
        for action in ensure_hooks(repo):
            print(f"modelgit: {action} in {repo.git_dir} (git push uploads the objects)",
                  file=sys.stderr)
    except Exception as exc:  # a hook is never a reason to fail a checkout or an add
        log.info("could not install hooks: %s", exc)


def _serve(repo: GitRepo, stdin: BinaryIO, stdout: BinaryIO, hold: _StoreHold) -> int:
    reader, writer = PktReader(stdin), PktWriter(stdout)
    _handshake(reader, writer)
    mode: str | None = None  # decided at the first smudge: clean-only processes never look
    pending: dict[str, bytes] = {}
    while True:
        try:
            request = reader.read_keyvalues()
        except EOFError:
            hold.release()  # git is done: whatever it commits of ours is referenced now
            return _fill_pending(repo, pending)
        command, path = request.get("command"), request.get("pathname", "")
        content = ContentStream(reader)
        if command == "clean":
            try:
                hold.acquire()
                result = clean(repo, path, content)
            except Exception as exc:  # any failure is this file's, not the process's
                content.drain()
                _report(path, exc)
                _respond(writer, "error")
                continue
            _respond(writer, "success", result)
        elif command == "smudge":
            data = content.read(-1)
            if not is_manifest(data):
                _respond(writer, "success", data)
                continue
            mode = mode or worktree.smudge_mode()
            if mode == worktree.SKIP:
                _respond(writer, "success", data)
                continue
            try:
                store, manifest = prepare_smudge(repo, path, data)
                if mode == worktree.DEFER:
                    worktree.check_space(repo, path, manifest)
            except Exception as exc:
                _report(path, exc)
                _respond(writer, "error")
                continue
            if mode != worktree.STREAM:
                if mode == worktree.DEFER:
                    pending[path] = data
                _respond(writer, "success", data)
                continue
            writer.text("status=success")
            writer.flush()
            try:
                smudge(store, manifest, writer)
            except Exception as exc:
                _report(path, exc)
                writer.flush()
                writer.text("status=error")
                writer.flush()
                continue
            writer.flush()
            writer.flush()
        else:
            content.drain()
            _respond(writer, "error")
