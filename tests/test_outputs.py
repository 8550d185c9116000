"""Output paths of every command with -o: checked before any work, never renamed over a link, a
device or a directory of the wrong kind, and the temporaries of killed runs removed."""

import os
import stat
import subprocess
import sys

import pytest

from modelgit import checkpoint
from modelgit._files import write_atomic
from modelgit.errors import UsageError

TEMPORARY_MARK = ".modelgit-tmp-"  # (not imported: these tests also run against older versions)


def _cli(cwd, *args):
    return subprocess.run([sys.executable, "-m", "modelgit", *args], cwd=cwd, capture_output=True,
                          text=True)


def _make(kind, path):
    """A special file at ``path``; returns its lstat."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        target = path.parent / f"{path.name}-target"
        target.write_bytes(b"the link's target")
        path.symlink_to(target)
    elif kind == "device":
        try:  # our own /dev/null: the machine's must not be at stake if this failed
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("creating a device node needs root")
    return os.lstat(path)


def _unchanged(path, before):
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    if stat.S_ISLNK(before.st_mode):
        assert (path.parent / f"{path.name}-target").read_bytes() == b"the link's target"


def test_check_output_states_and_refusals(tmp_path):
    from modelgit._outputs import check_output

    assert check_output(str(tmp_path / "new"), "directory") == "absent"
    (tmp_path / "empty").mkdir()
    assert check_output(str(tmp_path / "empty"), "directory") == "empty"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UsageError, match="not empty; pass --force"):
        check_output(str(tmp_path / "full"), "directory")
    assert check_output(str(tmp_path / "full"), "directory", force=True) == "nonempty"
    with pytest.raises(UsageError, match="choose a new directory"):
        check_output(str(tmp_path / "full"), "directory", flag=None)
    with pytest.raises(UsageError, match="is a directory"):
        check_output(str(tmp_path / "full"), "file", force=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a directory"):
        check_output(str(tmp_path / "f"), "directory", force=True)
    _make("fifo", tmp_path / "p")
    with pytest.raises(UsageError, match="FIFO"):
        check_output(str(tmp_path / "p"), "file", force=True)
    _make("symlink", tmp_path / "l")
    with pytest.raises(UsageError, match="symbolic link"):
        check_output(str(tmp_path / "l"), "file", force=True)


def _dead_process_token():
    """``<pid>.<start time>`` of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "import os, sys; print(os.getpid()); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pid = int(child.stdout.readline())
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    start = int(data[data.rindex(b")") + 2:].split()[19])
    child.stdin.close()
    child.wait()
    return f"{pid}.{start}"


def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    from modelgit import _outputs
    from modelgit._outputs import remove_stale_temporaries

    dead = tmp_path / f".model.safetensors{TEMPORARY_MARK}{_dead_process_token()}-0123abcd"
    dead.write_bytes(b"half")
    (tmp_path / f".out{TEMPORARY_MARK}{_dead_process_token()}-0123abcd.old").mkdir()
    live = tmp_path / os.path.basename(_outputs.temporary_path(str(tmp_path / "other")))
    live.mkdir()
    recycled = tmp_path / f".x{TEMPORARY_MARK}{os.getpid()}.1-0123abcd"  # our pid, not our start
    recycled.write_bytes(b"")
    legacy = tmp_path / f".model.safetensors{TEMPORARY_MARK}deadbeef"  # no process recorded
    legacy.write_bytes(b"")
    assert remove_stale_temporaries(str(tmp_path), "model.safetensors") == 3
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, legacy.name])  # legacy: too recent
    os.utime(legacy, (0, 0))
    assert remove_stale_temporaries(str(tmp_path), "other") == 0  # legacy names: their own name only
    assert remove_stale_temporaries(str(tmp_path), "model.safetensors") == 1


@pytest.mark.parametrize("kind", ["fifo", "symlink", "device"])
def test_materialize_force_never_renames_over_a_link_or_a_device(store, small_model, tmp_path, kind):
    path, _ = small_model
    manifest = checkpoint.add(store, str(path))
    dest = tmp_path / "dest"
    before = _make(kind, dest)
    with pytest.raises(UsageError, match=str(dest)):
        checkpoint.materialize(store, manifest, str(dest), force=True)
    _unchanged(dest, before)
    assert not [n for n in os.listdir(tmp_path) if "modelgit-tmp" in n]


def test_materialize_force_does_not_replace_a_directory_by_a_file(store, small_model, tmp_path):
    path, _ = small_model
    manifest = checkpoint.add(store, str(path))
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "precious.txt").write_text("x")
    with pytest.raises(UsageError, match="is a directory"):
        checkpoint.materialize(store, manifest, str(tmp_path / "dest"), force=True)
    assert (tmp_path / "dest" / "precious.txt").read_text() == "x"


@pytest.mark.parametrize("kind", ["fifo", "symlink", "device"])
def test_add_refuses_a_manifest_output_that_is_not_a_regular_file(small_model, tmp_path, kind):
    path, _ = small_model
    out = tmp_path / "m.manifest"
    before = _make(kind, out)
    result = _cli(tmp_path, "--store", str(tmp_path / "store"), "add", str(path), "-o", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr and str(out) in result.stderr
    _unchanged(out, before)


def test_write_atomic_removes_what_a_killed_writer_left(tmp_path):
    left = tmp_path / f".record.json{TEMPORARY_MARK}{_dead_process_token()}-0123abcd"
    left.write_text("half")
    write_atomic(str(tmp_path / "record.json"), "{}\n")
    assert os.listdir(tmp_path) == ["record.json"]


def test_write_atomic_never_renames_over_a_device(tmp_path):
    before = _make("device", tmp_path / "null")
    with pytest.raises(UsageError, match="device"):
        write_atomic(str(tmp_path / "null"), "{}\n")
    _unchanged(tmp_path / "null", before)


def test_extract_lora_into_a_non_empty_directory_needs_force(tmp_path):
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    base = {"layer.weight": torch.randn(16, 16)}
    tuned = {"layer.weight": base["layer.weight"] + torch.randn(16, 2) @ torch.randn(2, 16)}
    for name, tensors in (("base", base), ("tuned", tuned)):
        (tmp_path / name).mkdir()
        save_file(tensors, tmp_path / name / "model.safetensors")
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["extract-lora", str(tmp_path / "base"), str(tmp_path / "tuned"), "--rank", "2", "-o", str(out)]
    refused = _cli(tmp_path, *args)
    assert refused.returncode == 2 and "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert os.listdir(out) == ["notes.txt"]
    assert _cli(tmp_path, *args, "--force").returncode == 0
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors", "notes.txt"]


def test_save_fisher_never_writes_through_a_link(tmp_path):
    import torch

    from modelgit.merge.fisher import save_fisher

    out = tmp_path / "f.safetensors"
    before = _make("symlink", out)
    with pytest.raises(UsageError, match="symbolic link"):
        save_fisher({"w": torch.ones(2)}, out)
    _unchanged(out, before)
    save_fisher({"w": torch.ones(2)}, tmp_path / "g.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["f.safetensors", "f.safetensors-target", "g.safetensors"]


def test_a_spooled_checkpoint_left_by_a_killed_process_is_removed_by_the_next(tmp_path, monkeypatch):
    import tempfile

    from modelgit._outputs import scratch_directory

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    left = tmp_path / f".modelgit-spool{TEMPORARY_MARK}{_dead_process_token()}-0123abcd"
    left.mkdir()
    (left / "model.pt").write_bytes(b"half a checkpoint")
    with scratch_directory("modelgit-spool") as path:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700  # private, like mkdtemp's
        assert os.listdir(tmp_path) == [os.path.basename(path)]
    assert os.listdir(tmp_path) == []
