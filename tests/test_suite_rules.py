"""Rules the test suite itself keeps: nothing depends on how fast this machine is today."""

from __future__ import annotations

import ast
import pathlib
import time

from hypothesis import HealthCheck, given, settings, strategies as st

TESTS = pathlib.Path(__file__).parent


def test_hypothesis_runs_without_a_deadline_or_a_speed_health_check():
    assert settings.default.deadline is None
    assert HealthCheck.too_slow in settings.default.suppress_health_check


@settings(max_examples=2, database=None)
@given(st.integers())
def test_a_slow_example_is_not_a_failure(value):
    time.sleep(0.25)  # slower than hypothesis's default deadline (200 ms), as on a loaded machine


def _settings_deadlines(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "settings":
            for keyword in node.keywords:
                if keyword.arg == "deadline":
                    yield node.lineno, keyword.value


def test_no_test_sets_a_hypothesis_deadline():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for line, value in _settings_deadlines(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(value, ast.Constant) and value.value is None):
                offenders.append(f"{path.relative_to(TESTS)}:{line}")
    assert offenders == [], "a hypothesis deadline makes a test depend on wall time"
