"""`modelgit train` output: files with the umask's modes, the base by its absolute path."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from modelgit._outputs import current_umask


def test_train_writes_normal_files_and_records_an_absolute_base(lm_base, lm_data, tmp_path):
    parent, name = os.path.split(str(lm_base))
    out = tmp_path / "adapter"
    result = subprocess.run([sys.executable, "-m", "modelgit", "--no-progress", "train", name,
                             "--data", lm_data, "-o", str(out), "--steps", "2", "--threads", "1"],
                            cwd=parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    umask = current_umask()
    for dirpath, dirs, files in os.walk(out):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o777 & ~umask, dirpath
        for file in files:
            mode = stat.S_IMODE(os.stat(os.path.join(dirpath, file)).st_mode)
            assert mode == 0o666 & ~umask, (file, oct(mode))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == os.path.abspath(lm_base)
