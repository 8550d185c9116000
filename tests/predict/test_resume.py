"""`modelgit predict` as a user runs it: killed with SIGKILL after K batches (a test hook, not a
timer) and run again, it resumes and writes what an uninterrupted run writes; another job's
unfinished work is refused; errors exit 2 without a traceback; progress lines show rows/s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from modelgit.predict.journal import work_directory
from modelgit.predict.run import KILL_AFTER_ENV


def _predict(*argv, env=None):
    environment = {**os.environ, "MODELGIT_PROGRESS": "0", "OMP_NUM_THREADS": "1",
                   "HF_HUB_OFFLINE": "1", **(env or {})}
    environment.pop(KILL_AFTER_ENV, None) if not env or KILL_AFTER_ENV not in env else None
    return subprocess.run([sys.executable, "-m", "modelgit", "predict", *map(str, argv)],
                          env=environment, capture_output=True, text=True)


def _main(capsys, *argv, progress="--no-progress"):
    """The CLI in this process (no interpreter start): (exit code, stdout, stderr)."""
    from modelgit.cli.main import main

    code = main([progress, "predict", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _parts(output) -> list[str]:
    return sorted(n for n in os.listdir(work_directory(str(output))) if n.startswith("part-"))


@pytest.fixture(scope="module")
def job(lm_library, inputs):
    return [lm_library["router"], "--router", "--task", "score", "--input", inputs["parquet"],
            "--batch-rows", "5", "--id-column", "key"]


def test_a_killed_run_resumes_and_writes_what_an_uninterrupted_run_writes(tmp_path, job, capsys):
    full = tmp_path / "full.parquet"
    code, stdout, err = _main(capsys, *job, "-o", full)  # in this process: the reference
    assert code == 0, err
    assert "wrote 23 rows" in stdout
    assert not os.path.exists(work_directory(str(full)))  # removed once the output is in place

    out = tmp_path / "out.parquet"
    killed = _predict(*job, "-o", out, env={KILL_AFTER_ENV: "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()  # never a half-written output
    assert _parts(out) == ["part-00000000.parquet", "part-00000001.parquet"]
    again = _predict(*job, "-o", out, env={KILL_AFTER_ENV: "1"})  # resumed, killed once more
    assert again.returncode == -signal.SIGKILL and not out.exists()
    assert len(_parts(out)) == 3
    resumed = _predict(*job, "-o", out, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert '"resumed_batches": 3' in resumed.stdout and '"rows": 23' in resumed.stdout
    assert pq.read_table(out).equals(pq.read_table(full))
    assert not os.path.exists(work_directory(str(out)))


def test_another_jobs_unfinished_work_is_refused_until_restart(tmp_path, job, inputs, capsys):
    import shutil

    source = tmp_path / "in.parquet"
    shutil.copy(inputs["parquet"], source)
    mine = [a if a != inputs["parquet"] else source for a in job]
    out = tmp_path / "out.parquet"
    assert _predict(*mine, "-o", out, env={KILL_AFTER_ENV: "1"}).returncode == -signal.SIGKILL
    code, _, err = _main(capsys, *[a if a != "score" else "embed" for a in mine], "-o", out)
    assert code == 2 and "Traceback" not in err
    assert "has an unfinished run of another job" in err
    assert "options.task: 'score' then, 'embed' now" in err
    assert "--restart to discard it" in err
    table = pq.read_table(source)
    pq.write_table(table.slice(0, 20), source)  # the input rewritten
    code, _, err = _main(capsys, *mine, "-o", out)
    assert code == 2 and "input.size:" in err
    assert len(_parts(out)) == 1  # refused: nothing touched
    code, stdout, err = _main(capsys, *mine, "-o", out, "--restart")
    assert code == 0, err
    assert "wrote 20 rows" in stdout and "resumed" not in stdout
    assert pq.read_table(out).num_rows == 20


def test_cli_errors_and_progress_lines(tmp_path, lm_base, inputs, capsys, monkeypatch):
    code, _, err = _main(capsys, lm_base, "--task", "score", "--input", inputs["csv"],
                         "--text-column", "body", "-o", tmp_path / "x.parquet")
    assert code == 2 and "Traceback" not in err
    assert "has no column 'body'; its columns: key, text, other: give --text-column" in err
    assert not (tmp_path / "x.parquet").exists()
    monkeypatch.setenv("MODELGIT_PROGRESS", "lines")
    monkeypatch.setenv("MODELGIT_PROGRESS_INTERVAL", "0")
    code, _, err = _main(capsys, lm_base, "--task", "score", "--input", inputs["jsonl"],
                         "--batch-rows", "10", "-o", tmp_path / "y.parquet", progress="--debug")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("predict: ")]
    assert lines[0].startswith("predict: row 10, ") and "row/s" in lines[0]
    assert lines[-1].startswith("predict: done, 23 row in ")
