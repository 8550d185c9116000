"""What the CLI prints as people use it: a closed pipe, --version."""

from __future__ import annotations

import subprocess
import sys

from modelgit import __version__

from helpers import float_weights, write_safetensors


def test_ls_into_head_stops_quietly(tmp_path):
    write_safetensors(tmp_path / "many.safetensors",
                      {f"layer.{i}.weight": ("F32", (4, 4), float_weights(i, (4, 4)).tobytes())
                       for i in range(4000)})
    subprocess.run([sys.executable, "-m", "modelgit", "add", "many.safetensors"], cwd=tmp_path,
                   check=True, capture_output=True)
    # `modelgit ls M | head -1`: the reader takes one line and goes away
    proc = subprocess.Popen([sys.executable, "-m", "modelgit", "ls", "many.safetensors.manifest"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait()
    assert first.startswith(b"many.safetensors\tlayer.")
    assert err == "", err  # no "Broken pipe", no "Exception ignored"
    assert proc.returncode == 141  # as a process ended by SIGPIPE: git, cat and head agree


def test_version():
    result = subprocess.run([sys.executable, "-m", "modelgit", "--version"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"modelgit {__version__}"
