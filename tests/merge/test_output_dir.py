"""Where `modelgit merge` writes: never over a user's files or a device, and nothing left behind
by a merge killed midway."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

TIMEOUT = 600  # a bound on a hang, not on speed: the polls below normally end in a second


def _model(path, seed):
    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    save_file({f"layers.{i}.w": torch.randn(64, 64) for i in range(4)}, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps({"num_hidden_layers": 4}))


@pytest.fixture
def inputs(tmp_path):
    _model(tmp_path / "a", 0)
    _model(tmp_path / "b", 1)
    return tmp_path


def _merge(cwd, out, *extra, check=True):
    result = subprocess.run([sys.executable, "-m", "modelgit", "--no-progress", "merge", "--method", "linear",
                             "--model", str(cwd / "a"), "--model", str(cwd / "b"), "-o", str(out), *extra],
                            cwd=cwd, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _refused(result, *words):
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and result.stderr.startswith("modelgit: error:")
    for word in words:
        assert word in result.stderr, result.stderr


def _leftovers(directory):
    return [n for n in os.listdir(directory) if "modelgit-tmp" in n]


def test_a_non_empty_directory_needs_force_and_keeps_its_other_files(inputs):
    out = inputs / "out"
    (out / "notes").mkdir(parents=True)
    (out / "README.md").write_text("my notes")
    (out / "notes" / "n.txt").write_text("more")
    _refused(_merge(inputs, out, check=False), str(out), "--force")
    assert sorted(os.listdir(out)) == ["README.md", "notes"]  # 7b73911 deleted them
    _merge(inputs, out, "--force")
    assert (out / "README.md").read_text() == "my notes" and (out / "notes" / "n.txt").exists()
    assert set(load_file(out / "model.safetensors")) == {f"layers.{i}.w" for i in range(4)}
    assert _leftovers(inputs) == []


def test_force_replaces_the_files_of_an_earlier_merge_and_removes_its_stale_shards(inputs):
    out = inputs / "out"
    _merge(inputs, out, "--shard-size", "20000")
    shards = sorted(n for n in os.listdir(out) if n.startswith("model-"))
    assert len(shards) == 4
    marker = json.loads((out / "modelgit_merge.json").read_text())
    assert set(shards) <= set(marker["files"]) and "model.safetensors.index.json" in marker["files"]
    (out / "mine.txt").write_text("kept")
    _refused(_merge(inputs, out, check=False), "--force")
    _merge(inputs, out, "--force")  # one shard now: the four and their index must go
    assert sorted(os.listdir(out)) == ["config.json", "merge_recipe.yaml", "mine.txt",
                                       "model.safetensors", "modelgit_merge.json"]
    _merge(inputs, out, "--force", "--shard-size", "20000")  # and back: model.safetensors goes
    assert "model.safetensors" not in os.listdir(out) and (out / "mine.txt").exists()


def test_an_earlier_merge_alone_in_the_directory_is_replaced_whole(inputs):
    out = inputs / "out"
    _merge(inputs, out)
    first = os.stat(out).st_ino
    _merge(inputs, out, "--force", "--shard-size", "20000")
    assert os.stat(out).st_ino != first  # swapped at once, not file by file
    assert "model.safetensors" not in os.listdir(out)


def test_an_empty_directory_is_used_without_force(inputs):
    (inputs / "out").mkdir()
    _merge(inputs, inputs / "out")
    assert (inputs / "out" / "model.safetensors").exists()


def _special(kind, path):
    if kind == "file":
        path.write_text("not a directory")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        (path.parent / "elsewhere").mkdir()
        path.symlink_to(path.parent / "elsewhere")
    elif kind == "device":
        try:  # a /dev/null of our own: the real one must not be at stake if this failed
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("creating a device node needs root")
    return os.lstat(path)


@pytest.mark.parametrize("kind", ["file", "fifo", "symlink", "device"])
@pytest.mark.parametrize("force", [False, True])
def test_an_output_that_is_not_a_directory_is_refused_and_left_alone(inputs, kind, force):
    out = inputs / "target"
    before = _special(kind, out)
    result = _merge(inputs, out, *(["--force"] if force else []), check=False)
    _refused(result, str(out))
    after = os.lstat(out)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    if kind == "symlink":
        assert os.listdir(inputs / "elsewhere") == []
    assert _leftovers(inputs) == []


_PAUSED_CHILD = """
import sys, time
from modelgit.merge import writer

ready, argv = sys.argv[1], sys.argv[2:]
write_parts = writer.ShardedWriter.write_parts

def paused(self, name, parts):  # stop for good inside the first shard
    write_parts(self, name, parts)
    with open(ready + ".part", "w") as handle:
        handle.write(self.tmp)
    import os
    os.rename(ready + ".part", ready)
    time.sleep(3600)

writer.ShardedWriter.write_parts = paused
from modelgit.cli.main import main
sys.exit(main(argv))
"""


def _poll(condition, proc=None):
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the merge ended before it was killed: {proc.communicate()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_merge_killed_midway_leaves_a_temporary_that_the_next_merge_removes(inputs):
    out = inputs / "out"
    ready = inputs / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_CHILD, str(ready), "--no-progress", "merge",
                             "--method", "linear", "--model", str(inputs / "a"), "--model",
                             str(inputs / "b"), "-o", str(out)],
                            cwd=inputs, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _poll(ready.exists, proc)
        tmp = ready.read_text()
        assert os.path.isdir(tmp) and os.listdir(tmp)  # half a merge
        # a merge running meanwhile leaves the live one's temporary alone
        _merge(inputs, inputs / "other")
        assert os.path.isdir(tmp)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert os.path.isdir(tmp) and not out.exists()  # what kill -9 leaves
    _merge(inputs, out)
    assert not os.path.exists(tmp) and _leftovers(inputs) == []
    assert (out / "model.safetensors").exists()
