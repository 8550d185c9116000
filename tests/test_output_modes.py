"""Files modelgit writes for the user get the umask's modes, whatever library wrote them, and
an adapter records its local base by an absolute path."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from modelgit._outputs import current_umask, normal_modes


def _modes(root) -> dict[str, int]:
    out = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


def _expected(root) -> dict[str, int]:
    umask = current_umask()
    return {rel: (0o777 if os.path.isdir(os.path.join(root, rel)) else 0o666) & ~umask
            for rel in _modes(root)}


def test_current_umask_is_read_without_changing_it():
    mask = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027
    finally:
        os.umask(mask)


def test_normal_modes_fixes_private_files_and_keeps_executables_and_links(tmp_path):
    umask = current_umask()
    folder = tmp_path / "out"
    folder.mkdir(mode=0o700)
    (folder / "weights").write_bytes(b"x")
    os.chmod(folder / "weights", 0o600)
    (folder / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(folder / "run.sh", 0o700)
    (folder / "link").symlink_to("weights")
    normal_modes(str(folder))
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(os.stat(folder / "weights").st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(folder / "run.sh").st_mode) == 0o777 & ~umask
    assert os.path.islink(folder / "link")


def test_extract_lora_shows_progress_and_writes_normal_files(tmp_path):
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    base = {f"layers.{i}.weight": torch.randn(32, 32) for i in range(3)}
    tuned = {k: v + torch.randn(32, 2) @ torch.randn(2, 32) for k, v in base.items()}
    for name, tensors in (("base", base), ("tuned", tuned)):
        (tmp_path / name).mkdir()
        save_file(tensors, tmp_path / name / "model.safetensors")
    result = subprocess.run([sys.executable, "-m", "modelgit", "--progress", "extract-lora", "base",
                             "tuned", "--rank", "2", "-o", "adapter"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "extract-lora" in result.stderr  # progress, on stderr although it is no terminal
    out = tmp_path / "adapter"
    assert _modes(out) == _expected(out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
