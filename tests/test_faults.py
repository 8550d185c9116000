"""Fault injection: full disks, killed processes, damaged objects, hostile and future inputs.

Every test checks the promise behind the error, not only the error: nothing half-written stays
in the store or next to the destination, no ref points at an incomplete checkpoint, and the
operation succeeds once the fault is gone.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from modelgit import checkpoint
from modelgit.cli.main import main
from modelgit.errors import (CorruptObjectError, ModelgitError, ObjectMissingError,
                             StoreError, StoreFullError, UnsafeInputError)
from modelgit.manifest import Manifest
from modelgit.store import Store
from modelgit.store import backends
from modelgit.store.chunking import CHUNK_BYTES

from helpers import float_weights, write_safetensors

ROW = 1024  # F32 elements per row: 4 KiB rows, 1024 rows per 4 MiB chunk


def make_model(path, seed: int, mib: int = 20) -> bytes:
    """A safetensors file with one ~``mib`` MiB tensor (several chunks) and two small ones."""
    rows = mib * 1024 * 1024 // (ROW * 4)
    tensors = {
        "embed.weight": ("F32", (rows, ROW), float_weights(seed, (rows, ROW)).tobytes()),
        "norm.weight": ("F32", (ROW,), float_weights(seed + 1, (ROW,)).tobytes()),
        "step": ("I64", (), np.int64(seed).tobytes()),
    }
    return write_safetensors(path, tensors, metadata={"format": "pt"})


def cli_env() -> dict:
    env = dict(os.environ, MODELGIT_PROGRESS="0")
    env.pop("MODELGIT_DEBUG", None)
    env.pop("MODELGIT_STORE", None)
    return env


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """``python3 -m modelgit ARGS`` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "modelgit", *map(str, args)], cwd=cwd,
                          env=cli_env(), capture_output=True, text=True, timeout=600)  # a hang guard, not a speed bound


def tmp_files(store_dir) -> list[str]:
    tmp = os.path.join(str(store_dir), "tmp")
    return sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []


def object_path(store_dir, oid: str) -> str:
    return os.path.join(str(store_dir), "objects", oid[:2], oid[2:])


def leftovers_next_to(dest) -> list[str]:
    """Temporary files materialize may have left in the destination's directory."""
    parent = os.path.dirname(os.path.abspath(str(dest)))
    return [n for n in os.listdir(parent) if ".modelgit-tmp-" in n]


def assert_one_line_error(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("modelgit: error: "), stderr


# ---------------------------------------------------------------------------- full disk
class FailingWrite:
    """Stands in for ``os.write``: ENOSPC after ``allowed`` successful calls (thread-safe)."""

    def __init__(self, allowed: int | None):
        self.allowed = allowed
        self.calls = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._real = os.write

    def __call__(self, fd, data):
        with self._lock:
            self.calls += 1
            fail = self.allowed is not None and self.calls > self.allowed
            if fail:
                self.failures += 1
        if fail:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._real(fd, data)


def _count_store_writes(tmp_path, model, monkeypatch) -> int:
    counter = FailingWrite(None)
    store = Store.open(str(tmp_path / "count-store"), create=True)
    with monkeypatch.context() as patch:
        patch.setattr(backends.os, "write", counter)
        checkpoint.add(store, str(model), ref="model")
    return counter.calls


def test_full_disk_while_adding_keeps_store_clean_and_retry_succeeds(tmp_path, monkeypatch):
    model = tmp_path / "model.safetensors"
    original = make_model(model, seed=1, mib=20)
    total = _count_store_writes(tmp_path, model, monkeypatch)
    # header blob, 5 embed chunks, 2 small tensors, stat cache (2 writes), manifest, ref
    assert total >= 8
    # fail on the very first write, in the middle of the chunks, and on the last write (the ref)
    for allowed in sorted({0, 1, total // 2, total - 2, total - 1}):
        store_dir = tmp_path / f"store-{allowed}"
        store = Store.open(str(store_dir), create=True)
        failing = FailingWrite(allowed)
        with monkeypatch.context() as patch:
            patch.setattr(backends.os, "write", failing)
            with pytest.raises(StoreFullError) as info:
                checkpoint.add(store, str(model), ref="model")
        assert failing.failures >= 1
        message = str(info.value)
        assert store.url in message, message
        assert "free some space" in message.lower(), message
        assert tmp_files(store_dir) == [], f"temp files left after ENOSPC at write {allowed}"
        assert store.refs() == {}, f"a ref was set although the add failed (write {allowed})"
        assert store.verify() == []

        # the disk has room again: the same add completes and round-trips byte for byte
        manifest = checkpoint.add(store, str(model), ref="model")
        assert store.refs() == {"model": store.put_blob(manifest.dumps())}
        out = tmp_path / f"out-{allowed}.safetensors"
        checkpoint.materialize(store, checkpoint.load_manifest(store, "model"), str(out))
        assert out.read_bytes() == original
        assert store.verify() == []
        assert tmp_files(store_dir) == []


def test_full_disk_through_cli_is_one_line_error(tmp_path, monkeypatch, capsys):
    model = tmp_path / "model.safetensors"
    make_model(model, seed=2, mib=9)
    store_dir = tmp_path / "store"
    Store.open(str(store_dir), create=True)
    monkeypatch.setattr(backends.os, "write", FailingWrite(2))
    code = main(["--store", str(store_dir), "add", str(model), "-o", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 1
    assert_one_line_error(err)
    assert "no space left" in err and str(store_dir) in err
    assert not (tmp_path / "m").exists()
    assert tmp_files(store_dir) == []


class _EnospcFile:
    """A binary file whose writes fail with ENOSPC once ``limit`` bytes have been written."""

    def __init__(self, handle, limit: int):
        self._handle = handle
        self._left = limit

    def write(self, data) -> int:
        return self._take(data, self._handle.write)

    def pwrite(self, data, offset: int, real_pwrite) -> int:
        return self._take(data, lambda view: real_pwrite(self._handle.fileno(), view, offset))

    def os_write(self, data, real_write) -> int:
        return self._take(data, lambda view: real_write(self._handle.fileno(), view))

    def _take(self, data, write) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self._left:
            write(memoryview(data).cast("B")[:self._left])  # a partial write first
            self._left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= n
        return write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def fill_disk_under(monkeypatch, root, limit: int) -> None:
    """Files opened for writing under ``root`` fail with ENOSPC after ``limit`` bytes each,
    written through the file object or with ``os.write``/``os.pwrite`` on its descriptor."""
    real_open, real_pwrite, real_write = builtins.open, os.pwrite, os.write
    root = os.path.abspath(str(root)) + os.sep
    limited: dict[int, _EnospcFile] = {}

    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if (isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+")
                and os.path.abspath(os.fspath(file)).startswith(root)):
            limited[handle.fileno()] = _EnospcFile(handle, limit)
            return limited[handle.fileno()]
        return handle

    def fake_pwrite(fd, data, offset):
        if fd in limited and not limited[fd].closed:
            return limited[fd].pwrite(data, offset, real_pwrite)
        return real_pwrite(fd, data, offset)

    def fake_write(fd, data):
        if fd in limited and not limited[fd].closed:
            return limited[fd].os_write(data, real_write)
        return real_write(fd, data)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "pwrite", fake_pwrite)
    monkeypatch.setattr(os, "write", fake_write)


@pytest.fixture
def added_model(tmp_path):
    store = Store.open(str(tmp_path / "store"), create=True)
    model = tmp_path / "model.safetensors"
    original = make_model(model, seed=3, mib=12)
    manifest = checkpoint.add(store, str(model), ref="model")
    return store, manifest, original


@pytest.mark.parametrize("fault", ["write-header", "write-middle", "fsync"])
def test_full_disk_while_materializing_leaves_nothing(added_model, tmp_path, monkeypatch, fault):
    store, manifest, original = added_model
    dest = tmp_path / "out" / "restored.safetensors"
    if fault == "fsync":
        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", fsync)
    else:
        limit = 4 if fault == "write-header" else 3 * CHUNK_BYTES + 123
        fill_disk_under(monkeypatch, dest.parent, limit)
    with pytest.raises((OSError, ModelgitError)) as info:
        checkpoint.materialize(store, manifest, str(dest))
    if isinstance(info.value, OSError):
        assert info.value.errno == errno.ENOSPC
    assert not dest.exists()
    assert leftovers_next_to(dest) == []
    monkeypatch.undo()
    checkpoint.materialize(store, manifest, str(dest))
    assert dest.read_bytes() == original


def test_full_disk_while_materializing_over_existing_keeps_it(added_model, tmp_path, monkeypatch):
    store, manifest, original = added_model
    dest = tmp_path / "restored.safetensors"
    dest.write_bytes(b"the previous version")
    fill_disk_under(monkeypatch, tmp_path, CHUNK_BYTES)
    with pytest.raises(StoreFullError, match="no space left"):
        checkpoint.materialize(store, manifest, str(dest), force=True)
    assert dest.read_bytes() == b"the previous version"
    assert leftovers_next_to(dest) == []


def test_full_disk_while_materializing_a_directory(tmp_path, monkeypatch):
    store = Store.open(str(tmp_path / "store"), create=True)
    src = tmp_path / "hf"
    src.mkdir()
    make_model(src / "model.safetensors", seed=4, mib=9)
    (src / "config.json").write_text('{"hidden_size": 1024}')
    manifest = checkpoint.add(store, str(src), ref="hf")
    dest = tmp_path / "checkout"
    fill_disk_under(monkeypatch, dest.parent, CHUNK_BYTES + 7)
    with pytest.raises(StoreFullError, match="no space left"):
        checkpoint.materialize(store, manifest, str(dest))
    assert not dest.exists()
    assert leftovers_next_to(dest) == []


def test_full_disk_while_materializing_through_cli(added_model, tmp_path, monkeypatch, capsys):
    store, _, _ = added_model
    dest = tmp_path / "restored.safetensors"
    fill_disk_under(monkeypatch, tmp_path, CHUNK_BYTES)
    code = main(["--store", store.url, "materialize", "model", "-o", str(dest)])
    assert code != 0
    assert_one_line_error(capsys.readouterr().err)
    assert not dest.exists() and leftovers_next_to(dest) == []


# ---------------------------------------------------------------------------- killed process
_KILL_SCRIPT = """
import sys
from modelgit.cli.main import main
open(sys.argv[1], "w").close()  # imported: the add starts now
sys.exit(main(sys.argv[2:]))
"""


def _object_files(store_dir) -> int:
    base = os.path.join(str(store_dir), "objects")
    return sum(len(files) for _, _, files in os.walk(base))


def test_add_killed_mid_write_leaves_a_recoverable_store(tmp_path):
    big = tmp_path / "big.safetensors"
    original = make_model(big, seed=5, mib=48)  # 12 chunks
    store_dir = tmp_path / "store"
    manifest_path = tmp_path / "big.manifest"
    Store.open(str(store_dir), create=True)  # so that the first temp file seen is an object's
    killed_mid_add = killed_mid_object = 0
    # kill while chunks are being written, then once 2 and 5 more objects are written (staged
    # or published); retry the first kind if no kill landed while objects were unpublished
    for attempt, when in enumerate(["tmp", 2, 5, "tmp", "tmp", "tmp"]):
        if attempt >= 3 and killed_mid_object:
            break
        started = tmp_path / f"started-{attempt}"
        before, tmp_before = _object_files(store_dir), len(tmp_files(store_dir))
        env = dict(cli_env(), MODELGIT_THREADS="1")  # one writer thread: a longer add to hit
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILL_SCRIPT, str(started), "--store", str(store_dir), "add",
             str(big), "-o", str(manifest_path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        while proc.poll() is None and time.monotonic() < deadline:
            # objects are staged as temporary files and renamed into place in batches, so
            # count both: written-but-unpublished objects are what a kill must not expose
            staged = len(tmp_files(store_dir)) - tmp_before
            new = _object_files(store_dir) - before + max(staged, 0)
            if when == "tmp" and new >= 2 and staged > 0:  # past the tiny header blob
                break
            if when != "tmp" and new >= when:
                break
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        if proc.returncode == -signal.SIGKILL:
            killed_mid_add += 1
            killed_mid_object += len(tmp_files(store_dir)) > tmp_before
        else:
            assert proc.returncode == 0

        # the CLI writes the manifest atomically after the add: absent, or complete and valid
        if manifest_path.exists():
            check = tmp_path / f"check-{attempt}"
            checkpoint.materialize(Store.open(str(store_dir)),
                                   Manifest.loads(manifest_path.read_bytes()), str(check))
            assert check.read_bytes() == original
            manifest_path.unlink()
        store = Store.open(str(store_dir))
        assert store.verify() == [], "a killed add left a half-written object"
        for name, oid in store.refs().items():  # a ref only ever names a complete checkpoint
            checkpoint.materialize(store, checkpoint.load_manifest(store, oid),
                                   str(tmp_path / f"ref-{attempt}-{name}"))
    assert killed_mid_add >= 1, "the kill never landed before the add finished"
    assert killed_mid_object >= 1, "no kill landed while an object was being written"

    store = Store.open(str(store_dir))
    assert tmp_files(store_dir)
    checkpoint.collect_garbage(store)
    assert tmp_files(store_dir) == []
    for leftover in [n for n in os.listdir(tmp_path) if n.startswith("big.manifest.tmp")]:
        os.unlink(tmp_path / leftover)  # the CLI's own temp manifest, if the kill hit it

    assert main(["--store", str(store_dir), "add", str(big), "-o", str(manifest_path)]) == 0
    out = tmp_path / "restored.safetensors"
    assert main(["--store", str(store_dir), "materialize", str(manifest_path), "-o", str(out)]) == 0
    assert out.read_bytes() == original
    assert Store.open(str(store_dir)).verify() == []


# ---------------------------------------------------------------------------- damaged store
def _big_chunk(manifest: Manifest) -> str:
    return manifest.files[0].tensor("embed.weight").chunks[1]


@pytest.mark.parametrize("where", ["payload", "header"])
def test_corrupt_object_is_reported_and_never_materialized(added_model, tmp_path, where):
    store, manifest, _ = added_model
    oid = _big_chunk(manifest)
    path = object_path(store.url, oid)
    blob = bytearray(open(path, "rb").read())
    position = len(blob) // 2 if where == "payload" else 0
    blob[position] ^= 0x5A
    with open(path, "wb") as handle:
        handle.write(blob)

    dest = tmp_path / "restored.safetensors"
    with pytest.raises(CorruptObjectError) as info:
        checkpoint.materialize(store, manifest, str(dest))
    assert oid in str(info.value) and "moved to quarantine" in str(info.value)
    assert not dest.exists()
    assert leftovers_next_to(dest) == []
    problems = store.verify()  # still reported, until it is fetched or added again
    assert len(problems) == 1 and oid in problems[0] and "quarantine" in problems[0]

    if where == "payload":  # once through a real process: exit code 1 and the id on stdout
        result = run_cli("--store", store.url, "verify")
        assert result.returncode == 1, result
        assert oid in result.stdout
        assert "Traceback" not in result.stderr


def test_missing_object_names_object_and_store(added_model, tmp_path):
    store, manifest, _ = added_model
    oid = _big_chunk(manifest)
    os.unlink(object_path(store.url, oid))
    dest = tmp_path / "restored.safetensors"
    with pytest.raises(ObjectMissingError) as info:
        checkpoint.materialize(store, manifest, str(dest))
    assert oid in str(info.value) and store.url in str(info.value)
    assert not dest.exists() and leftovers_next_to(dest) == []

    manifest_file = tmp_path / "model.manifest"
    manifest_file.write_bytes(manifest.dumps())
    result = run_cli("--store", store.url, "materialize", manifest_file, "-o", dest)
    assert result.returncode != 0
    assert_one_line_error(result.stderr)
    assert oid in result.stderr and store.url in result.stderr
    assert not dest.exists() and leftovers_next_to(dest) == []

    problems = checkpoint.verify(store, [manifest])
    assert len(problems) == 1 and oid in problems[0]


# ---------------------------------------------------------------------------- hostile input files
def _header_file(path, header: dict, data: bytes = b"", header_len: int | None = None) -> None:
    text = json.dumps(header).encode()
    length = len(text) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", length) + text + data)


def _truncated(path):
    full = write_safetensors(path, {"a": ("F32", (256, 256), float_weights(1, (256, 256)).tobytes())})
    path.write_bytes(full[:len(full) // 2])


def _truncated_in_header(path):
    full = write_safetensors(path, {"a": ("F32", (4,), bytes(16))})
    path.write_bytes(full[:12])


def _too_short(path):
    path.write_bytes(b"\x10\x00\x00")


def _overlapping(path):
    _header_file(path, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, bytes(24))


def _huge_header_len(path):
    _header_file(path, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4),
                 header_len=2**63)


def _unknown_dtype(path):
    _header_file(path, {"a": {"dtype": "F33", "shape": [4], "data_offsets": [0, 16]}}, bytes(16))


@pytest.mark.parametrize("make_bad", [_truncated, _truncated_in_header, _too_short, _overlapping,
                                      _huge_header_len, _unknown_dtype])
def test_malformed_safetensors_is_refused_without_trace(tmp_path, capsys, make_bad):
    bad = tmp_path / "bad.safetensors"
    make_bad(bad)
    store_dir = tmp_path / "store"
    code = main(["--store", str(store_dir), "add", str(bad)])
    err = capsys.readouterr().err
    assert code != 0
    assert_one_line_error(err)
    assert str(bad) in err
    assert not (tmp_path / "bad.safetensors.manifest").exists()
    assert [n for n in os.listdir(tmp_path) if "manifest" in n] == []
    store = Store.open(str(store_dir))
    assert store.refs() == {}
    assert tmp_files(store_dir) == []


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["legacy-pickle", "torch-save"])
def test_pickle_with_code_is_refused_and_never_run(tmp_path, capsys, writer):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    if writer == "legacy-pickle":  # a bare pickle, as torch.save wrote before 1.6
        evil.write_bytes(pickle.dumps({"x": _Evil(str(marker))}, protocol=2))
    else:  # a zip-format torch.save whose data.pkl holds the payload next to a real tensor
        import torch

        torch.save({"weight": torch.zeros(3), "x": _Evil(str(marker))}, str(evil))
    assert not marker.exists()
    store_dir = tmp_path / "store"
    code = main(["--store", str(store_dir), "add", str(evil)])
    err = capsys.readouterr().err
    assert code != 0
    assert_one_line_error(err)
    assert "refused" in err and str(evil) in err
    assert not marker.exists(), "modelgit executed code from a pickle"
    assert Store.open(str(store_dir)).refs() == {}
    assert not (tmp_path / "evil.pt.manifest").exists()

    from modelgit.formats.torch_pt import open_torch

    with pytest.raises(UnsafeInputError):
        open_torch(str(evil))
    assert not marker.exists()


def test_manifest_from_newer_version_asks_to_upgrade(added_model, tmp_path, capsys):
    store, manifest, _ = added_model
    text = manifest.dumps().decode().replace("modelgit-manifest 1", "modelgit-manifest 2", 1)
    future = tmp_path / "future.manifest"
    future.write_text(text)
    dest = tmp_path / "restored.safetensors"
    code = main(["--store", store.url, "materialize", str(future), "-o", str(dest)])
    err = capsys.readouterr().err
    assert code != 0
    assert_one_line_error(err)
    assert "upgrade" in err
    assert not dest.exists() and leftovers_next_to(dest) == []


# ---------------------------------------------------------------------------- full disk, torch files
@pytest.mark.parametrize("full", ["destination", "tempdir"])
def test_full_disk_while_materializing_a_torch_checkpoint(tmp_path, monkeypatch, full):
    """torch files are rebuilt in a temporary directory first: neither place keeps debris."""
    import gc
    import tempfile

    import torch

    store = Store.open(str(tmp_path / "store"), create=True)
    src = tmp_path / "model.pt"
    weights = {"embed.weight": torch.from_numpy(float_weights(8, (2048, ROW))),
               "step": torch.tensor(3)}
    torch.save(weights, str(src))
    manifest = checkpoint.add(store, str(src), ref="pt")
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dest = out_dir / "restored.pt"
    fill_disk_under(monkeypatch, out_dir if full == "destination" else systmp, CHUNK_BYTES // 2)
    error = None
    try:
        checkpoint.materialize(store, manifest, str(dest))
    except Exception as exc:  # the type is checked through the CLI below
        error = f"{type(exc).__name__}: {exc}"
    gc.collect()  # a half-consumed generator cleans its temporary directory when collected
    assert error is not None, "materialize succeeded on a full disk"
    assert not dest.exists()
    assert leftovers_next_to(dest) == []
    assert os.listdir(systmp) == [], "the temporary rebuild of the torch file was left behind"
    monkeypatch.undo()
    checkpoint.materialize(store, manifest, str(dest))
    restored = torch.load(str(dest), weights_only=True)
    assert torch.equal(restored["embed.weight"], weights["embed.weight"])


TORCH_ENOSPC_REASON = (
    "formats/torch_pt.write_torch lets torch.save's RuntimeError ('[enforce fail at "
    "inline_container.cc] unexpected pos ...' / 'file write failed') escape when the disk of the "
    "temporary directory fills; it is no ModelgitError/OSError, so the CLI dies with a traceback")


def test_full_temp_disk_while_materializing_torch_is_one_line_error(tmp_path, monkeypatch, capsys):
    import tempfile

    import torch

    store_dir = tmp_path / "store"
    store = Store.open(str(store_dir), create=True)
    src = tmp_path / "model.pt"
    torch.save({"w": torch.from_numpy(float_weights(9, (1024, ROW)))}, str(src))
    checkpoint.add(store, str(src), ref="pt")
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    fill_disk_under(monkeypatch, systmp, CHUNK_BYTES // 2)
    dest = tmp_path / "restored.pt"
    code = main(["--store", str(store_dir), "materialize", "pt", "-o", str(dest)])
    err = capsys.readouterr().err
    assert code == 1
    assert_one_line_error(err)
    assert "space" in err.lower()
    assert not dest.exists()


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_failed_flush_at_commit_leaves_no_object_and_retry_succeeds(tmp_path, monkeypatch, error):
    """Objects are made durable by an fdatasync each when their batch is committed: a failure
    there (a full disk, an I/O error) must leave neither temporary files nor visible objects."""
    model = tmp_path / "model.safetensors"
    original = make_model(model, seed=3, mib=9)
    store_dir = tmp_path / "store"
    store = Store.open(str(store_dir), create=True)

    def failing_fdatasync(fd):
        raise OSError(error, os.strerror(error))

    with monkeypatch.context() as patch:
        patch.setattr(backends.os, "fdatasync", failing_fdatasync)
        with pytest.raises(StoreFullError if error == errno.ENOSPC else StoreError) as info:
            checkpoint.add(store, str(model), ref="model")
    assert store.url in str(info.value)
    assert tmp_files(store_dir) == []
    assert store.refs() == {} and list(store.iter_objects()) == []

    checkpoint.add(store, str(model), ref="model")
    out = tmp_path / "out.safetensors"
    checkpoint.materialize(store, checkpoint.load_manifest(store, "model"), str(out))
    assert out.read_bytes() == original and store.verify() == []


def test_checkout_of_a_checkpoint_too_big_for_the_disk_fails_before_writing(tmp_path, monkeypatch):
    """The space a checkpoint needs is reserved before its first byte is written: a full disk
    stops the materialisation there, with the usual message, and leaves no file behind."""
    import ctypes

    from modelgit import _files

    model = tmp_path / "model.safetensors"
    make_model(model, seed=4, mib=5)
    store = Store.open(str(tmp_path / "store"), create=True)
    manifest = checkpoint.add(store, str(model), ref="model")
    requests = []

    def full_disk(fd, mode, offset, length):
        requests.append(length)
        ctypes.set_errno(errno.ENOSPC)
        return -1

    monkeypatch.setattr(_files, "_FALLOCATE", full_disk)
    out_dir = tmp_path / "out"
    with pytest.raises(StoreFullError, match="no space left"):
        checkpoint.materialize(store, manifest, str(out_dir / "model.safetensors"))
    assert requests == [manifest.logical_bytes]
    assert list(out_dir.iterdir()) == []


def test_reserved_space_keeps_the_file_size(tmp_path):
    from modelgit._files import reserve_space

    path = tmp_path / "f.bin"
    with open(path, "wb") as handle:
        reserve_space(handle.fileno(), 8 << 20)
        handle.write(b"x" * 100)
    info = os.stat(path)
    assert info.st_size == 100
    if info.st_blocks * 512 < 8 << 20:
        pytest.skip("this filesystem does not reserve space (fallocate unsupported)")
