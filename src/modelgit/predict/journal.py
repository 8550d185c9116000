"""A prediction's work directory: what makes a run resumable and its output all-or-nothing.

Beside the output ``OUT`` a run keeps ``.OUT.modelgit-predict/``:

    job.json               the job: the input's path and identity (size, mtime, device, inode),
                           the options and the model's identity (canonical JSON, written once)
    part-00000000.parquet  the predictions of batch 0, then 1, 2...: each written under a
                           temporary name, fsynced and renamed, so a part that exists is whole

The finished batches are the parts ``0..k-1`` present: a run killed at any point (``kill -9``)
resumes with batch ``k``. A work directory whose ``job.json`` differs (another input, the same
path rewritten, other options, other weights) is never resumed: the run stops and says what
differs (``restart=True`` discards it). Once every batch is done the parts are streamed into a
temporary beside ``OUT``, fsynced and renamed over it; only then is the work directory removed.
"""

from __future__ import annotations

import os
import re

from .._outputs import install_file, remove, remove_stale_temporaries, temporary_path
from ..errors import UsageError
from ..untrusted import dumps_json, load_json_file

__all__ = ["Journal", "work_directory"]

JOB_FILE = "job.json"
_PART = re.compile(r"^part-(\d{8})\.parquet$")
#: rows are gathered from the parts into row groups of about this many bytes
ROW_GROUP_BYTES = 64 << 20


def work_directory(output: str) -> str:
    """The work directory of the output ``output``."""
    parent, name = os.path.split(os.path.abspath(output))
    return os.path.join(parent, f".{name}.modelgit-predict")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out.extend(_differences(old.get(key), new.get(key), f"{prefix}{key}" if not prefix
                                    else f"{prefix}.{key}"))
        return out
    return [] if old == new else [f"{prefix or 'job'}: {old!r} then, {new!r} now"]


class Journal:
    """The work directory of one job (use :meth:`open`).

    Attributes:
        directory; done: the number of finished batches (parts 0..done-1).
    """

    def __init__(self, output: str, job: dict, done: int):
        self.output, self.job, self.done = output, job, done
        self.directory = work_directory(output)

    @classmethod
    def open(cls, output: str, job: dict, restart: bool = False) -> "Journal":
        """The journal of ``job`` for ``output``: resumed when its work directory holds this
        job, created when there is none.

        Raises:
            UsageError: the work directory holds another job (and not ``restart``).
        """
        directory = work_directory(output)
        job = _canonical(job)
        # an output half-written by a killed run's last step (its temporary) goes first
        remove_stale_temporaries(os.path.dirname(directory))
        if os.path.isdir(directory):
            old = cls._read_job(directory)
            if old is not None and old != job and not restart:
                changes = _differences(old, job)
                raise UsageError(
                    f"{output} has an unfinished run of another job in {directory} ("
                    + "; ".join(changes[:4]) + (f"; {len(changes) - 4} more" if len(changes) > 4
                                                else "")
                    + "): run the same job again to resume it, or pass --restart to discard it")
            if old is None or old != job:  # killed before job.json was in place, or restart
                remove(directory)
        if not os.path.isdir(directory):
            os.makedirs(directory)
            path = os.path.join(directory, JOB_FILE)
            tmp = temporary_path(path)
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(dumps_json(job))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            _fsync_dir(directory)
        remove_stale_temporaries(directory)
        return cls(output, job, _contiguous(directory))

    @staticmethod
    def _read_job(directory: str) -> dict | None:
        path = os.path.join(directory, JOB_FILE)
        if not os.path.isfile(path):
            return None
        return load_json_file(path, path, 1 << 20)

    def part(self, index: int) -> str:
        return os.path.join(self.directory, f"part-{index:08d}.parquet")

    def write_part(self, index: int, table) -> None:
        """Write batch ``index``'s predictions (whole or not at all)."""
        import pyarrow.parquet as pq

        if index != self.done:
            raise ValueError(f"part {index} written after {self.done} parts")
        path = self.part(index)
        tmp = temporary_path(path)
        try:
            pq.write_table(table, tmp)
            _fsync_file(tmp)
            os.replace(tmp, path)
        except BaseException:
            remove(tmp)
            raise
        _fsync_dir(self.directory)
        self.done += 1

    def finish(self, schema) -> int:
        """Stream the parts into ``output`` (temporary, fsync, rename), then remove the work
        directory; returns the number of rows written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = temporary_path(self.output)
        rows = 0
        try:
            with pq.ParquetWriter(tmp, schema) as writer:
                pending, held = [], 0
                for index in range(self.done):
                    table = pq.read_table(self.part(index), schema=schema)
                    pending.append(table)
                    held += table.nbytes
                    rows += table.num_rows
                    if held >= ROW_GROUP_BYTES:
                        writer.write_table(pa.concat_tables(pending), ROW_GROUP_BYTES)
                        pending, held = [], 0
                if pending or rows == 0:
                    writer.write_table(pa.concat_tables(pending) if pending
                                       else schema.empty_table(), ROW_GROUP_BYTES)
            _fsync_file(tmp)
            install_file(tmp, self.output)
        except BaseException:
            remove(tmp)
            raise
        _fsync_dir(os.path.dirname(os.path.abspath(self.output)))
        remove(self.directory)
        return rows


def _canonical(job: dict) -> dict:
    """``job`` as it reads back from job.json (tuples as lists...)."""
    from ..untrusted import loads_json

    return loads_json(dumps_json(job).encode(), "job", 1 << 20)


def _contiguous(directory: str) -> int:
    """How many parts 0, 1, 2... are present; any part after a gap is removed (it cannot be
    written after a gap, but a hand-edited directory is not trusted)."""
    found = sorted(int(m.group(1)) for m in map(_PART.match, os.listdir(directory)) if m)
    done = 0
    while done < len(found) and found[done] == done:
        done += 1
    for index in found[done:]:
        remove(os.path.join(directory, f"part-{index:08d}.parquet"))
    return done
