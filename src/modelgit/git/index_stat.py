"""Record the stat data of work-tree files in git's index, without git reading them again.

After the filter replaced a manifest git wrote with its checkpoint (see ``worktree``), the
index still holds the manifest file's size and times, and git takes a different size for a
modification without looking at the content. ``git update-index`` can only clear the stat data
(then the next git command streams the whole file through the filter once more, ~1 s per GB),
so this module writes the new stat data into the index itself, the way git does: under
``index.lock`` (created exclusively, so it waits for no one and races no one), a new file with
the entries' stat fields changed in place and the trailing checksum recomputed, renamed over
the index. Entry sizes do not change, so extensions and their offsets stay valid.

Only what is fully understood is touched: index versions 2 to 4, no split index, and only
merged (stage 0) entries of the given paths whose object id is the expected one. Anything
else returns False and the caller falls back to clearing the stat data.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct

from .repo import GitRepo

__all__ = ["record_stat", "object_format"]

_STAT = struct.Struct(">10I")  # ctime s/ns, mtime s/ns, dev, ino, mode, uid, gid, size
_EXTENDED = 0x4000
_HASH_LENGTH = {"sha1": 20, "sha256": 32}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """git's offset varint (index v4 path compression): (value, position after it)."""
    byte = data[pos]
    pos += 1
    value = byte & 0x7F
    while byte & 0x80:
        byte = data[pos]
        pos += 1
        value = ((value + 1) << 7) | (byte & 0x7F)
    return value, pos


def _entries(data: bytes, hash_len: int):
    """(path, offset of the entry, stage, object id hex) of every index entry.

    Raises:
        ValueError: the index is not one this module understands.
    """
    if data[:4] != b"DIRC":
        raise ValueError("not an index file")
    version, count = struct.unpack(">II", data[4:12])
    if version not in (2, 3, 4):
        raise ValueError(f"index version {version}")
    pos, previous = 12, b""
    for _ in range(count):
        start = pos
        pos += _STAT.size
        oid = data[pos:pos + hash_len].hex()
        pos += hash_len
        (flags,) = struct.unpack(">H", data[pos:pos + 2])
        pos += 2
        if flags & _EXTENDED:
            if version < 3:
                raise ValueError("extended flags in a version 2 index")
            pos += 2
        if version == 4:
            strip, pos = _varint(data, pos)
            end = data.index(b"\0", pos)
            if strip > len(previous):
                raise ValueError("bad path compression")
            path = previous[:len(previous) - strip] + data[pos:end]
            pos = end + 1
        else:
            end = data.index(b"\0", pos)
            path = data[pos:end]
            pos = start + ((pos - start + len(path) + 8) & ~7)
        previous = path
        yield path.decode("utf-8", "surrogateescape"), start, (flags >> 12) & 3, oid
    if data.find(b"link", pos, pos + 4) == pos:
        raise ValueError("split index")


def _stat_fields(st: os.stat_result, git_mode: int) -> bytes:
    def u32(value: int) -> int:
        return value & 0xFFFFFFFF

    return _STAT.pack(u32(int(st.st_ctime)), st.st_ctime_ns % 1_000_000_000,
                      u32(int(st.st_mtime)), st.st_mtime_ns % 1_000_000_000,
                      u32(st.st_dev), u32(st.st_ino), git_mode, u32(st.st_uid), u32(st.st_gid),
                      u32(st.st_size))


def object_format(repo: GitRepo) -> str:
    """The repository's hash algorithm: ``sha1`` or ``sha256``."""
    return repo.git("rev-parse", "--show-object-format").decode().strip() or "sha1"


def record_stat(repo: GitRepo, expected: dict[str, str], algorithm: str | None = None) -> bool:
    """Write the current stat data of work-tree files ``{path: object id}`` into the index.

    Returns True when every path was updated; False (and the index untouched) when the index
    is locked, of a kind this module does not handle, or an entry is not the expected one.
    """
    index = repo.git("rev-parse", "--git-path", "index").decode().strip()
    index = index if os.path.isabs(index) else os.path.join(repo.root, index)
    algorithm = algorithm or object_format(repo)
    hash_len = _HASH_LENGTH.get(algorithm)
    if hash_len is None:
        return False
    lock = index + ".lock"
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False  # another git command is writing the index: leave it to git
    renamed = False
    try:
        with open(index, "rb") as handle:
            data = bytearray(handle.read())
        if len(data) < 12 + hash_len:
            return False
        body = data[:-hash_len]
        try:
            found = {path: (start, oid) for path, start, stage, oid in _entries(bytes(body), hash_len)
                     if stage == 0 and path in expected}
        except (ValueError, IndexError, struct.error):
            return False
        if set(found) != set(expected) or any(oid != expected[p] for p, (_, oid) in found.items()):
            return False
        for path, (start, _oid) in found.items():
            st = os.lstat(os.path.join(repo.root, path))
            git_mode = _STAT.unpack_from(body, start)[6]
            body[start:start + _STAT.size] = _stat_fields(st, git_mode)
        trailer = bytes(hash_len) if not any(data[-hash_len:]) else \
            hashlib.new(algorithm, body).digest()  # index.skipHash writes a null checksum
        with os.fdopen(fd, "wb") as out:
            fd = -1
            out.write(body)
            out.write(trailer)
            out.flush()
            os.fsync(out.fileno())
        os.replace(lock, index)
        renamed = True
        return True
    finally:
        if fd >= 0:
            os.close(fd)
        if not renamed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
