"""Fault injection on what modelgit reads: files rewritten or truncated while they are added,
gc running while git adds, special files and symlinks in added directories, colliding refs.

Each fault is injected at a chosen point of the code (a wrapped function, a blocking git filter,
a FIFO nobody writes), never by hoping that a timer lands in the right place. Where the old code
would crash the interpreter (SIGBUS) or block forever (opening a FIFO), the add runs in a
subprocess and the test watches for that outcome instead of waiting for it to time out.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from modelgit import checkpoint
from modelgit.cli.main import main
from modelgit.errors import FileChangedError, UnsupportedFileError
from modelgit.manifest import Manifest
from modelgit.store import Store
from modelgit.store import backends
from modelgit.store.chunking import CHUNK_BYTES

from gitutil import git, git_env, modelgit  # noqa: F401  (git_env: autouse)
from helpers import float_weights, random_bytes, write_safetensors

ROW = 1024  # F32 elements per row: 1024 rows per 4 MiB chunk
HOUR_NS = 3600 * 10**9


def make_model(path, seed: int, mib: int = 16) -> bytes:
    rows = mib * 1024 * 1024 // (ROW * 4)
    return write_safetensors(path, {
        "embed.weight": ("F32", (rows, ROW), float_weights(seed, (rows, ROW)).tobytes()),
        "norm.weight": ("F32", (ROW,), float_weights(seed + 1, (ROW,)).tobytes()),
    }, metadata={"format": "pt"})


def age(path, ns: int = HOUR_NS) -> None:
    """Make ``path`` look written ``ns`` ago: a rewrite now is then visible in its mtime, however
    coarse the filesystem's clock (the test must not depend on the add taking a clock tick)."""
    then = time.time_ns() - ns
    os.utime(path, ns=(then, then))


def cli_env(**extra) -> dict:
    env = dict(os.environ, MODELGIT_PROGRESS="0", **extra)
    for name in ("MODELGIT_DEBUG", "MODELGIT_STORE"):
        env.pop(name, None)
    return env


# ---------------------------------------------------------------------------- changed under add
# The hook: the store hashes a chunk, then encodes and writes it. Right after the first full
# chunk is hashed, the file is rewritten (same size) or truncated. Reading through a mapping, the
# encoder then saw other bytes than the hasher (an object whose id is not its content), or the
# process died of SIGBUS on the pages that no longer exist.
_CHANGE_SCRIPT = r"""
import json, sys
from modelgit.cli.main import main
from modelgit.store import store as store_module

plan = json.loads(sys.argv[1])
real_object_id, fired = store_module.object_id, []

def object_id(dtype, shape, data):
    oid = real_object_id(dtype, shape, data)
    if not fired and len(data) == plan["chunk"]:
        fired.append(True)
        with open(plan["path"], "r+b") as handle:
            if plan["how"] == "truncate":
                handle.truncate(plan["size"] // 2)
            else:
                handle.write(open(plan["other"], "rb").read())
    return oid

store_module.object_id = object_id
sys.exit(main(plan["argv"]))
"""


def _add_while_changing(tmp_path, how: str, model, other=None) -> subprocess.CompletedProcess:
    plan = {"chunk": CHUNK_BYTES, "path": str(model), "how": how, "size": model.stat().st_size,
            "other": str(other) if other else None,
            "argv": ["--store", str(tmp_path / "store"), "add", str(model), "-o",
                     str(tmp_path / "model.manifest"), "--ref", "model"]}
    return subprocess.run([sys.executable, "-c", _CHANGE_SCRIPT, json.dumps(plan)],
                          env=cli_env(MODELGIT_THREADS="1"), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("how", ["rewrite", "truncate"])
def test_a_file_changed_during_add_fails_the_add_and_never_poisons_the_store(tmp_path, how):
    model, other = tmp_path / "model.safetensors", tmp_path / "other.safetensors"
    original = make_model(model, seed=1)
    make_model(other, seed=2)  # same header and size, other weights
    age(model)
    result = _add_while_changing(tmp_path, how, model, other)

    assert result.returncode == 1, (f"add ended with {result.returncode}"
                                    f"{' (SIGBUS)' if result.returncode == -signal.SIGBUS else ''}: "
                                    f"{result.stderr[-2000:]}")
    assert "Traceback" not in result.stderr
    assert f"{model} changed while it was being added" in result.stderr
    assert "add it again once it is no longer being written" in result.stderr
    if how == "truncate":
        assert "truncated" in result.stderr or "size went from" in result.stderr
    store = Store.open(str(tmp_path / "store"))
    assert store.refs() == {}  # no ref names a mix of two versions
    assert not (tmp_path / "model.manifest").exists()
    assert store.verify() == []  # every object written holds exactly the bytes of its id

    # the untouched original, added again, deduplicates against what is there and comes back
    model.write_bytes(original)
    assert main(["--store", str(tmp_path / "store"), "add", str(model), "--ref", "model"]) == 0
    out = tmp_path / "restored.safetensors"
    checkpoint.materialize(store, checkpoint.load_manifest(store, "model"), str(out))
    assert out.read_bytes() == original


@pytest.mark.parametrize("kind", ["blob", "torch", "npz"])
def test_every_format_notices_a_rewrite_during_add(tmp_path, monkeypatch, kind):
    """Plain files, torch checkpoints and npz archives are read through the same open file and
    checked the same way (safetensors: the test above)."""
    import torch

    path = tmp_path / {"blob": "data.bin.raw", "torch": "model.pt", "npz": "arrays.npz"}[kind]
    values = float_weights(3, (2048, ROW))  # 8 MiB: two chunks
    if kind == "blob":
        path.write_bytes(random_bytes(3, 2 * CHUNK_BYTES))
    elif kind == "torch":
        torch.save({"w": torch.from_numpy(values), "t": torch.from_numpy(values).t()}, path)
    else:
        np.savez(path, w=values)
    age(path)
    original = path.read_bytes()
    store = Store.open(str(tmp_path / "store"), create=True)
    from modelgit.store import store as store_module

    real, fired = store_module.object_id, []

    def rewrite_after_first_chunk(dtype, shape, data):
        oid = real(dtype, shape, data)
        if not fired and len(data) >= CHUNK_BYTES // 2:
            fired.append(True)
            with open(path, "r+b") as handle:  # flip the last byte: same size, new mtime
                handle.seek(-1, os.SEEK_END)
                last = handle.read(1)
                handle.seek(-1, os.SEEK_END)
                handle.write(bytes([last[0] ^ 0xFF]))
        return oid

    with monkeypatch.context() as patch:
        patch.setattr(store_module, "object_id", rewrite_after_first_chunk)
        with pytest.raises(FileChangedError, match="changed while it was being added"):
            checkpoint.add(store, str(path), ref="x")
    assert fired and store.refs() == {}
    assert store.verify() == []
    path.write_bytes(original)
    manifest = checkpoint.add(store, str(path), ref="x")
    out = tmp_path / "out"
    checkpoint.materialize(store, manifest, str(out))
    if kind == "blob":
        assert out.read_bytes() == original


def test_a_file_replaced_by_rename_during_add_fails_the_add(tmp_path, monkeypatch):
    model = tmp_path / "model.safetensors"
    make_model(model, seed=5, mib=8)
    replacement = tmp_path / "replacement"
    make_model(replacement, seed=6, mib=8)
    store = Store.open(str(tmp_path / "store"), create=True)
    from modelgit.store import store as store_module

    real, fired = store_module.object_id, []

    def swap(dtype, shape, data):
        if not fired:
            fired.append(True)
            os.replace(replacement, model)  # what an atomic save does
        return real(dtype, shape, data)

    monkeypatch.setattr(store_module, "object_id", swap)
    with pytest.raises(FileChangedError, match="another file was put in its place"):
        checkpoint.add(store, str(model), ref="model")
    assert store.refs() == {}


# ---------------------------------------------------------------------------- special files
def _watch_for_fifo_reader(proc: subprocess.Popen, fifo) -> str:
    """Wait until ``proc`` exits, or until someone opens ``fifo`` for reading (an open for
    writing without blocking then succeeds): the add would block there forever. Returns
    "exited" or "opened"."""
    while True:
        if proc.poll() is not None:
            return "exited"
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader
            time.sleep(0.01)
            continue
        os.close(fd)  # the reader sees end of file and goes on
        return "opened"


@pytest.mark.parametrize("where", ["in a directory", "given directly"])
def test_a_fifo_is_refused_and_never_opened(tmp_path, where):
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    fifo = directory / ("weights.safetensors" if where == "given directly" else "pipe")
    os.mkfifo(fifo)
    target = fifo if where == "given directly" else directory
    proc = subprocess.Popen([sys.executable, "-m", "modelgit", "--store", str(tmp_path / "store"),
                             "add", str(target)], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = _watch_for_fifo_reader(proc, fifo)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert seen == "exited", "add opened the FIFO (it would block until someone writes to it)"
    assert proc.returncode == 1, err
    assert f"{fifo}: is a named pipe (FIFO), not a regular file" in err
    assert "Traceback" not in err


def test_a_socket_in_a_directory_is_refused(tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "a.bin").write_bytes(b"a")
    server = socket.socket(socket.AF_UNIX)
    path = directory / "s.sock"
    if len(str(path)) > 100:
        pytest.skip("socket path too long for AF_UNIX")
    server.bind(str(path))
    try:
        store = Store.open(str(tmp_path / "store"), create=True)
        with pytest.raises(UnsupportedFileError, match="is a socket"):
            checkpoint.add(store, str(directory), ref="m")
        assert store.refs() == {}
    finally:
        server.close()


def test_symlinks_in_an_added_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not part of the model")
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    store = Store.open(str(tmp_path / "store"), create=True)

    # a link to a file inside the tree is stored as that file (a regular file when checked out)
    os.symlink("../config.json", model / "sub" / "linked.json")
    manifest = checkpoint.add(store, str(model), ref="m")
    assert sorted(f.path for f in manifest.files) == ["config.json", "sub/linked.json"]
    out = tmp_path / "out"
    checkpoint.materialize(store, manifest, str(out))
    assert not os.path.islink(out / "sub" / "linked.json")
    assert (out / "sub" / "linked.json").read_text() == '{"a": 1}'

    # a link leaving the tree, to a directory, or to nothing, is refused before anything is read
    for name, target, message in [
            ("leak.txt", str(outside / "secret.txt"), "outside"),
            ("up.txt", "../../outside/secret.txt", "outside"),
            ("dir", "sub", "symbolic link to a directory"),
            ("dangling", "nowhere", "does not exist")]:
        link = model / name
        os.symlink(target, link)
        with pytest.raises(UnsupportedFileError, match=message) as caught:
            checkpoint.add(store, str(model), ref="leaked")
        assert str(link) in str(caught.value)
        link.unlink()
    assert "leaked" not in store.refs()
    assert not any(store.get(oid) == b"not part of the model" for oid in store.iter_objects()
                   if store.header(oid).dtype == "U8")

    # the path the user names may itself be a link: their choice
    os.symlink(model, tmp_path / "model-link")
    assert checkpoint.add(store, str(tmp_path / "model-link")).files == manifest.files


# ---------------------------------------------------------------------------- refs, verify
def _age_objects(store_dir) -> None:
    for folder, _, names in os.walk(os.path.join(str(store_dir), "objects")):
        for name in names:
            age(os.path.join(folder, name), 2 * HOUR_NS)


def test_files_of_the_same_name_in_two_directories_get_two_refs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, seed in (("a", 1), ("b", 2)):
        (tmp_path / name).mkdir()
        make_model(tmp_path / name / "model.safetensors", seed=seed, mib=4)
    store_dir = tmp_path / "store"
    for name in ("a", "b"):
        assert main(["--store", str(store_dir), "add", f"{name}/model.safetensors"]) == 0
    store = Store.open(str(store_dir))
    assert len(store.refs()) == 2
    _age_objects(store_dir)
    assert main(["--store", str(store_dir), "gc"]) == 0
    for name in ("a", "b"):
        out = tmp_path / f"{name}.out"
        manifest = checkpoint.load_manifest(store, f"{name}/model.safetensors.manifest")
        checkpoint.materialize(store, manifest, str(out))
        assert out.read_bytes() == (tmp_path / name / "model.safetensors").read_bytes()


def test_verify_without_arguments_reports_an_object_a_ref_needs(tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    make_model(model, seed=3, mib=8)
    store_dir = tmp_path / "store"
    assert main(["--store", str(store_dir), "add", str(model), "--ref", "v1"]) == 0
    store = Store.open(str(store_dir))
    manifest = checkpoint.load_manifest(store, "v1")
    lost = manifest.files[0].tensor("embed.weight").chunks[1]
    os.unlink(os.path.join(str(store_dir), "objects", lost[:2], lost[2:]))
    capsys.readouterr()
    assert main(["--store", str(store_dir), "verify"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert lost in lines[0] and "ref v1" in lines[0] and "embed.weight" in lines[0]


# ---------------------------------------------------------------------------- gc during git add
def _exclusive_attempts(monkeypatch) -> threading.Event:
    """An event set when someone tries to take a store lock exclusively and finds it taken."""
    blocked = threading.Event()
    real_flock = backends.fcntl.flock

    def flock(fd, operation):
        try:
            return real_flock(fd, operation)
        except BlockingIOError:
            if operation & backends.fcntl.LOCK_EX:
                blocked.set()
            raise

    monkeypatch.setattr(backends.fcntl, "flock", flock)
    return blocked


def test_gc_while_git_add_runs_keeps_what_git_commits(tmp_path, monkeypatch):
    """gc runs after the filter stored a checkpoint and before git wrote its index.

    A second path uses a plain clean filter that waits for a "go" file, so `git add` stops
    right after modelgit's filter returned the manifest of model.safetensors and before git
    records it. gc then starts; once it has either finished or is seen waiting for the store
    lock, git is let go. Everything git then commits must be in the store.
    """
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    modelgit(repo, "init")
    modelgit(repo, "track", "*.safetensors")
    reached, go = tmp_path / "blocker-reached", tmp_path / "blocker-go"
    git(repo, "config", "filter.blocker.clean",
        f"sh -c 'touch {reached}; while [ ! -e {go} ]; do sleep 0.01; done; cat'")
    with open(repo / ".gitattributes", "a") as handle:
        handle.write("zz-last.txt filter=blocker\n")
    original = make_model(repo / "model.safetensors", seed=9, mib=24)
    (repo / "zz-last.txt").write_text("cleaned last\n")

    adding = subprocess.Popen(["git", "add", "model.safetensors", "zz-last.txt", ".gitattributes"],
                              cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store_dir = repo / ".git" / "modelgit" / "store"
    try:
        while not reached.exists():  # modelgit's clean of model.safetensors has returned
            assert adding.poll() is None, adding.communicate()
            time.sleep(0.01)
        assert sum(len(f) for _, _, f in os.walk(store_dir / "objects")) >= 6
        blocked = _exclusive_attempts(monkeypatch)
        done, codes = threading.Event(), []

        def run_gc():
            try:
                codes.append(main(["--store", str(store_dir), "gc"]))
            finally:
                done.set()

        monkeypatch.chdir(repo)
        gc_thread = threading.Thread(target=run_gc)
        gc_thread.start()
        while not (done.is_set() or blocked.is_set()):
            time.sleep(0.01)
        gc_was_held_off = blocked.is_set() and not done.is_set()
    finally:
        go.touch()
    out, err = adding.communicate(timeout=300)
    assert adding.returncode == 0, err
    gc_thread.join(300)
    assert codes == [0]
    git(repo, "commit", "-qm", "model")

    committed = Manifest.loads(git(repo, "show", "HEAD:model.safetensors").stdout.encode())
    store = Store.open(str(store_dir))
    missing = sorted(oid for oid in committed.object_ids() if not store.has(oid))
    assert missing == [], f"gc deleted {len(missing)} objects that git committed"
    assert modelgit(repo, "verify").returncode == 0
    (repo / "model.safetensors").unlink()
    git(repo, "checkout", "--", "model.safetensors")
    assert (repo / "model.safetensors").read_bytes() == original
    # the filter held the store lock until git was done: gc waited instead of deleting
    assert gc_was_held_off

    # and had an object gone, a plain verify would say which, and that git's index needs it
    lost = committed.files[0].tensor("embed.weight").chunks[0]
    os.unlink(store_dir / "objects" / lost[:2] / lost[2:])
    result = modelgit(repo, "verify", check=False)
    assert result.returncode == 1
    assert f"object {lost} is missing" in result.stdout
    assert "git index entry model.safetensors" in result.stdout


def test_gc_grace_period_keeps_young_unreferenced_objects(tmp_path):
    """Writers that cannot hold the lock until their result is referenced (git's merge driver,
    fetch) are protected by the grace period; reused objects are freshened by a new add."""
    store = Store.open(str(tmp_path / "store"), create=True)
    young = store.put_blob(b"written just now, referenced by nothing yet")
    old = store.put_blob(b"written long ago, referenced by nothing")
    reused = store.put_blob(b"written long ago, then reused by a new add")
    for oid in (old, reused):
        age(os.path.join(str(tmp_path / "store"), "objects", oid[:2], oid[2:]), 2 * HOUR_NS)
    assert store.put_blob(b"written long ago, then reused by a new add") == reused  # dedup
    result = checkpoint.collect_garbage(store)
    assert (store.has(young), store.has(old), store.has(reused)) == (True, False, True)
    assert result.removed == 1 and result.kept_young == 2
    checkpoint.collect_garbage(store, grace_seconds=0)
    assert not store.has(young) and not store.has(reused)


def test_gc_of_a_repository_store_run_from_elsewhere_keeps_what_git_needs(tmp_path, monkeypatch):
    """The store of a repository is known as one by its location, not by where gc runs."""
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    modelgit(repo, "init")
    modelgit(repo, "track", "*.safetensors")
    make_model(repo / "model.safetensors", seed=4, mib=8)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "model")
    store_dir = repo / ".git" / "modelgit" / "store"
    _age_objects(store_dir)  # no grace period: only the roots protect them
    monkeypatch.chdir(tmp_path)
    assert main(["--store", str(store_dir), "gc"]) == 0
    committed = Manifest.loads(git(repo, "show", "HEAD:model.safetensors").stdout.encode())
    store = Store.open(str(store_dir))
    assert all(store.has(oid) for oid in committed.object_ids())
    assert main(["--store", str(store_dir), "gc", "--prune", "soon"]) == 2  # a usage error
