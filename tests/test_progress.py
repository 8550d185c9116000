"""Progress: bars on a terminal, periodic plain lines when stderr is not one, nothing when off."""

from __future__ import annotations

import sys

import pytest

from modelgit import progress
from modelgit.progress import progress_bar, progress_mode


class _Err:
    def __init__(self, capsys):
        self.capsys, self.text = capsys, ""

    def getvalue(self) -> str:
        self.text += self.capsys.readouterr().err
        return self.text


@pytest.fixture
def stderr(capsys, monkeypatch):
    """What the code wrote to stderr (pytest's capture is no terminal)."""
    monkeypatch.delenv("MODELGIT_PROGRESS", raising=False)
    monkeypatch.setenv("MODELGIT_PROGRESS_INTERVAL", "0")
    return _Err(capsys)


def test_mode_follows_flag_then_environment_then_terminal(stderr, monkeypatch):
    assert progress_mode(True) == "bar" and progress_mode(False) == "off"
    assert progress_mode(None) == "lines"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress_mode(None) == "bar"
    for value, mode in (("0", "off"), ("1", "bar"), ("lines", "lines")):
        monkeypatch.setenv("MODELGIT_PROGRESS", value)
        assert progress_mode(None) == mode


def test_lines_carry_step_total_rate_eta_and_stats(stderr):
    with progress_bar(4, "train", None, unit="step") as bar:
        for step in range(4):
            bar.update(1, loss=2.5 - step / 10)
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 5, lines
    assert lines[0].startswith("train: step 1/4 (25%), ") and "step/s" in lines[0]
    assert "ETA " in lines[0] and lines[0].endswith("loss 2.5000")
    assert lines[3].startswith("train: step 4/4 (100%)") and "ETA" not in lines[3]
    assert lines[4].startswith("train: done, 4 step in ") and lines[4].endswith("loss 2.2000")


def test_byte_lines_are_scaled(stderr):
    with progress_bar(3 * 1024 * 1024, "push objects", None) as bar:
        bar.update(1024 * 1024)
    assert stderr.getvalue().splitlines()[0].startswith("push objects: 1.0 MiB/3.0 MiB (33%)")


def test_lines_wait_for_the_interval(stderr, monkeypatch):
    clock = iter([0.0, 5.0, 10.0, 25.0, 26.0]).__next__
    monkeypatch.setattr(progress.time, "monotonic", clock)
    monkeypatch.setenv("MODELGIT_PROGRESS_INTERVAL", "20")
    with progress_bar(3, "eval", None, unit="batch") as bar:
        bar.update()  # t=5: too early
        bar.update()  # t=10: too early
        bar.update()  # t=25: a line
    assert stderr.getvalue().splitlines() == ["eval: batch 3/3 (100%), 0.12 batch/s",
                                              "eval: done, 3 batch in 26s"]


def test_nothing_when_off_or_short(stderr, monkeypatch):
    with progress_bar(3, "x", False, unit="step") as bar:
        bar.update(3)
    monkeypatch.setenv("MODELGIT_PROGRESS_INTERVAL", "3600")
    with progress_bar(3, "x", None, unit="step") as bar:
        bar.update(3)
    progress.note("hello", False)
    assert stderr.getvalue() == ""
    progress.note("hello", None)
    assert stderr.getvalue() == "hello\n"
