"""Concurrency: several processes and threads adding to one store, and gc racing adds.

Worker processes import modelgit first (importing torch takes seconds), say so with a "ready"
file and wait for a shared "go" file, so that their adds really overlap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from modelgit import checkpoint
from modelgit.manifest import Manifest
from modelgit.store import Store

from helpers import float_weights, write_safetensors

ROW = 1024  # F32 elements per row (4 KiB)
# only a bound on a hang, never on speed: far beyond what any of these takes on a loaded machine
HANG_SECONDS = 600

_WORKER = r"""
import json, os, sys, time
from modelgit.cli.main import main

ready, go, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
if plan["mode"] == "commands":  # run CLI commands one after another, stop at the first failure
    for argv in plan["commands"]:
        code = main(argv)
        if code:
            sys.exit(code)
elif plan["mode"] == "gc-until":  # run `modelgit gc` until the stop file appears
    runs = failures = 0
    while not os.path.exists(plan["stop"]):
        failures += main(["--store", plan["store"], "gc"]) != 0  # keep going: report at the end
        runs += 1
    print(f"gc runs: {runs}, failed: {failures}", file=sys.stderr)
    sys.exit(1 if failures else 0)
"""


def _env() -> dict:
    env = dict(os.environ, MODELGIT_PROGRESS="0")
    env.pop("MODELGIT_STORE", None)
    env.pop("MODELGIT_DEBUG", None)
    return env


class Workers:
    """Worker processes started together: ``start`` each, then ``go``, then ``wait``."""

    def __init__(self, tmp_path):
        self.dir = tmp_path / "workers"
        self.dir.mkdir(exist_ok=True)
        self.go_file = self.dir / "go"
        self.procs: list[tuple[str, subprocess.Popen, object]] = []

    def start(self, name: str, plan: dict) -> None:
        ready = self.dir / f"ready-{name}"
        proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(ready), str(self.go_file),
                                 json.dumps(plan)], env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append((name, proc, ready))

    def go(self) -> None:
        deadline = time.monotonic() + HANG_SECONDS
        for name, proc, ready in self.procs:
            while not os.path.exists(ready):
                assert proc.poll() is None, f"worker {name} died: {proc.communicate()}"
                assert time.monotonic() < deadline, f"worker {name} never got ready"
                time.sleep(0.01)
        self.go_file.touch()

    def wait(self, name: str, timeout: float = HANG_SECONDS) -> tuple[int, str, str]:
        for own, proc, _ in self.procs:
            if own == name:
                out, err = proc.communicate(timeout=timeout)
                return proc.returncode, out, err
        raise KeyError(name)

    def kill_all(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture
def workers(tmp_path):
    pool = Workers(tmp_path)
    yield pool
    pool.kill_all()


def make_checkpoint(path, own_seed: int, shared_seed: int = 1000, own_rows: int = 2048,
                    shared_rows: int = 2048) -> bytes:
    """A safetensors file: a tensor shared by every checkpoint (same seed) and one of its own."""
    tensors = {
        "shared.weight": ("F32", (shared_rows, ROW),
                          float_weights(shared_seed, (shared_rows, ROW)).tobytes()),
        "own.weight": ("F32", (own_rows, ROW), float_weights(own_seed, (own_rows, ROW)).tobytes()),
        "step": ("I64", (), np.int64(own_seed).tobytes()),
    }
    return write_safetensors(path, tensors, metadata={"format": "pt"})


def assert_store_serves(store_dir, expected: dict[str, bytes], out_dir) -> None:
    """Every ref in ``expected`` materialises to its bytes, and every object verifies."""
    store = Store.open(str(store_dir))
    refs = store.refs()
    assert set(expected) <= set(refs), f"missing refs: {set(expected) - set(refs)}"
    problems = []
    for name, original in expected.items():
        out = os.path.join(str(out_dir), f"{name}.out")
        try:
            checkpoint.materialize(store, checkpoint.load_manifest(store, name), out)
        except Exception as exc:  # collect every broken ref, not only the first
            problems.append(f"ref {name}: {exc}")
            continue
        with open(out, "rb") as handle:
            if handle.read() != original:
                problems.append(f"ref {name}: materialised bytes differ")
    assert problems == []
    assert store.verify() == []
    assert not os.listdir(os.path.join(str(store_dir), "tmp"))


# ---------------------------------------------------------------------------- processes
def test_processes_adding_different_checkpoints_with_shared_tensors(tmp_path, workers):
    store_dir = tmp_path / "store"
    originals = {}
    for i, name in enumerate(["alpha", "beta", "gamma"]):
        path = tmp_path / f"{name}.safetensors"
        originals[name] = make_checkpoint(path, own_seed=i)
        workers.start(name, {"mode": "commands", "commands": [
            ["--store", str(store_dir), "add", str(path), "-o", str(tmp_path / f"{name}.manifest"),
             "--ref", name]]})
    workers.go()
    for name in originals:
        code, out, err = workers.wait(name)
        assert code == 0, f"{name}: {err}"
    manifests = {name: Manifest.loads((tmp_path / f"{name}.manifest").read_bytes())
                 for name in originals}
    shared = {m.files[0].tensor("shared.weight").chunks for m in manifests.values()}
    assert len(shared) == 1  # the shared tensor is stored once
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert_store_serves(store_dir, originals, out_dir)
    store = Store.open(str(store_dir))
    own = {c for m in manifests.values() for c in m.files[0].tensor("own.weight").chunks}
    assert len(own) == 3 * 2  # 8 MiB each: two chunks per checkpoint, none shared
    assert set(store.iter_objects()) >= own | set(next(iter(shared)))


def test_processes_adding_the_same_checkpoint(tmp_path, workers):
    store_dir = tmp_path / "store"
    path = tmp_path / "model.safetensors"
    original = make_checkpoint(path, own_seed=7, own_rows=4096)
    for name in ("first", "second"):
        workers.start(name, {"mode": "commands", "commands": [
            ["--store", str(store_dir), "add", str(path), "-o", str(tmp_path / f"{name}.manifest"),
             "--ref", "model"]]})
    workers.go()
    for name in ("first", "second"):
        code, out, err = workers.wait(name)
        assert code == 0, f"{name}: {err}"
    first = (tmp_path / "first.manifest").read_bytes()
    assert first == (tmp_path / "second.manifest").read_bytes()
    store = Store.open(str(store_dir))
    assert store.refs() == {"model": store.put_blob(first)}
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert_store_serves(store_dir, {"model": original}, out_dir)


GC_RACE_REASON = (
    "checkpoint.collect_garbage computes the live set from the refs BEFORE Store.gc takes the "
    "exclusive lock; an add that finishes (objects + new ref) in between has its objects deleted")


def test_gc_racing_adds_never_deletes_what_a_ref_needs(tmp_path, workers):
    store_dir = tmp_path / "store"
    Store.open(str(store_dir), create=True)
    originals, commands = {}, []
    for i in range(10):
        name = f"ck{i}"
        path = tmp_path / f"{name}.safetensors"
        originals[name] = make_checkpoint(path, own_seed=100 + i, own_rows=512 + 64 * i,
                                          shared_rows=256)
        commands.append(["--store", str(store_dir), "add", str(path), "-o",
                         str(tmp_path / f"{name}.manifest"), "--ref", name])
    stop = tmp_path / "stop-gc"
    workers.start("adder", {"mode": "commands", "commands": commands})
    workers.start("gc", {"mode": "gc-until", "stop": str(stop), "store": str(store_dir)})
    workers.go()
    try:
        code, _, err = workers.wait("adder")
    finally:
        stop.touch()
    assert code == 0, err
    gc_code, _, gc_err = workers.wait("gc")
    assert "gc runs: 0," not in gc_err  # gc really ran while adding
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert_store_serves(store_dir, originals, out_dir)
    assert gc_code == 0, gc_err  # gc itself never fails (e.g. on a ref whose objects it deleted)


def test_gc_snapshot_of_refs_taken_before_a_concurrent_add_finishes(tmp_path, monkeypatch):
    """The interleaving of the race above, made deterministic in one process.

    gc reads the refs; an add (another process in real life) then writes its objects and its ref
    and releases its shared lock; only then does gc get the exclusive lock and delete.
    """
    store_dir = tmp_path / "store"
    gc_store = Store.open(str(store_dir), create=True)
    old = tmp_path / "old.safetensors"
    make_checkpoint(old, own_seed=1, own_rows=512, shared_rows=256)
    checkpoint.add(gc_store, str(old), ref="old")
    new = tmp_path / "new.safetensors"
    new_bytes = make_checkpoint(new, own_seed=2, own_rows=512, shared_rows=256)

    real_gc = Store.gc

    def gc_after_a_concurrent_add(self, live, dry_run=False, grace_seconds=0.0):
        adder = Store.open(str(store_dir))  # the other process
        checkpoint.add(adder, str(new), ref="new")
        return real_gc(self, live, dry_run, grace_seconds=0.0)  # only the lock protects it

    monkeypatch.setattr(Store, "gc", gc_after_a_concurrent_add)
    checkpoint.collect_garbage(gc_store)
    monkeypatch.undo()
    out = tmp_path / "new.out"
    checkpoint.materialize(gc_store, checkpoint.load_manifest(gc_store, "new"), str(out))
    assert out.read_bytes() == new_bytes


# ---------------------------------------------------------------------------- threads
def _add_in_threads(tmp_path, stores: list[Store], n: int = 4) -> dict[str, bytes]:
    originals, errors = {}, []
    paths = []
    for i in range(n):
        path = tmp_path / f"t{i}.safetensors"
        originals[f"t{i}"] = make_checkpoint(path, own_seed=200 + i, own_rows=1024 + 256 * i)
        paths.append(path)
    barrier = threading.Barrier(n)

    def run(i):
        try:
            barrier.wait()
            checkpoint.add(stores[i % len(stores)], str(paths[i]), ref=f"t{i}")
        except BaseException as exc:  # reported below
            errors.append(f"thread {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_SECONDS)
    assert not any(thread.is_alive() for thread in threads), "an add hung"
    assert errors == []
    return originals


def test_threads_adding_with_their_own_store_objects(tmp_path):
    store_dir = tmp_path / "store"
    stores = [Store.open(str(store_dir), create=True) for _ in range(4)]
    originals = _add_in_threads(tmp_path, stores)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert_store_serves(store_dir, originals, out_dir)


def test_threads_adding_through_one_shared_store_object(tmp_path):
    store_dir = tmp_path / "store"
    store = Store.open(str(store_dir), create=True)
    for _ in range(3):  # the lock bookkeeping races are timing-dependent: give them a few rounds
        originals = _add_in_threads(tmp_path, [store])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert_store_serves(store_dir, originals, out_dir)
    # every add released the store lock: an exclusive lock is granted at once (asked without
    # waiting, so that a slow machine cannot pass for a leak)
    assert not _store_lock_is_held(store_dir), "a shared store lock was leaked by a concurrent add"


def _store_lock_is_held(store_dir) -> bool:
    """True when some writer (or gc) holds the store lock: an exclusive flock is refused."""
    import fcntl

    fd = os.open(os.path.join(str(store_dir), "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the lock if we got it
    return False


def test_thread_starting_an_add_while_another_syncs_keeps_the_lock(tmp_path, monkeypatch):
    """A slow directory fsync at the end of one add must not release the lock of the next one.

    Thread A finishes its add and sits in ``sync_dirs`` (a slow disk); thread B starts an add on
    the same Store object right then. B's object writes must still happen under the shared store
    lock (else a gc could delete what B deduplicated), and both adds must succeed.
    """
    from modelgit.store import LocalBackend

    store_dir = tmp_path / "store"
    store = Store.open(str(store_dir), create=True)
    paths, originals = [], {}
    for i, name in enumerate(["a", "b"]):
        path = tmp_path / f"{name}.safetensors"
        originals[name] = make_checkpoint(path, own_seed=300 + i, own_rows=64, shared_rows=64)
        paths.append(path)

    real_sync, real_put = LocalBackend.sync_dirs, Store.put
    a_syncing, first_sync = threading.Event(), [True]
    unlocked_puts, errors = [], []

    def slow_sync(self):
        if first_sync[0] and threading.current_thread().name == "adder-a":
            first_sync[0] = False
            a_syncing.set()
            time.sleep(0.3)
        return real_sync(self)

    def checked_put(self, *args, **kwargs):
        if threading.current_thread().name == "adder-b" and not _store_lock_is_held(store_dir):
            unlocked_puts.append(args[:2])
        return real_put(self, *args, **kwargs)

    monkeypatch.setattr(LocalBackend, "sync_dirs", slow_sync)
    monkeypatch.setattr(Store, "put", checked_put)
    monkeypatch.setenv("MODELGIT_THREADS", "1")  # puts run in the adding thread itself

    def add(name, path, wait=None):
        try:
            if wait is not None:
                assert wait.wait(HANG_SECONDS)
            checkpoint.add(store, str(path), ref=name)
        except BaseException as exc:  # reported below
            errors.append(f"{name}: {type(exc).__name__}: {exc}")

    thread_a = threading.Thread(target=add, args=("a", paths[0]), name="adder-a")
    thread_b = threading.Thread(target=add, args=("b", paths[1], a_syncing), name="adder-b")
    thread_a.start()
    thread_b.start()
    thread_a.join(HANG_SECONDS)
    thread_b.join(HANG_SECONDS)
    assert not thread_a.is_alive() and not thread_b.is_alive(), "an add hung"
    assert errors == []
    assert unlocked_puts == [], "an add wrote objects without holding the store lock"
    assert not _store_lock_is_held(store_dir), "the store lock leaked"
    monkeypatch.undo()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert_store_serves(store_dir, originals, out_dir)
