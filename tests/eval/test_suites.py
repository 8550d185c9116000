"""Suites files: YAML or JSON, relative paths, and every problem reported at once."""

from __future__ import annotations

import json

import pytest

from modelgit.errors import UsageError
from modelgit.eval import SuiteConfig, load_suites


def test_yaml_and_json_suites(tmp_path):
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "a.txt").write_text("x y\n")
    (tmp_path / "held" / "b.csv").write_text("text,label\nx,1\n")
    (tmp_path / "suites.yaml").write_text(
        "suites:\n"
        "  - {name: lm, data: held/a.txt}\n".replace("}", ", task: causal_lm}") +
        "  - name: cls\n    data: held/b.csv\n    metric: macro_f1\n    max_examples: 10\n")
    suites = load_suites(tmp_path / "suites.yaml")
    assert suites == [
        SuiteConfig(name="lm", data=str(tmp_path / "held" / "a.txt"), task="causal_lm", metric="perplexity"),
        SuiteConfig(name="cls", data=str(tmp_path / "held" / "b.csv"), task="classification",
                    metric="macro_f1", max_examples=10)]
    assert not suites[0].higher_is_better and suites[1].higher_is_better
    (tmp_path / "suites.json").write_text(json.dumps([{"name": "lm", "data": "held/a.txt",
                                                       "metric": "perplexity"}]))
    assert load_suites(tmp_path / "suites.json")[0] == suites[0]


def test_every_problem_is_reported_at_once(tmp_path):
    (tmp_path / "a.txt").write_text("x\n")
    (tmp_path / "s.yaml").write_text(
        "suites:\n"
        "  - {name: one, data: missing.txt, task: causal_lm}\n"
        "  - {name: two, data: a.txt, task: classification, metric: perplexity}\n"
        "  - {name: one, data: a.txt, metric: bleu, max_examples: 0, colour: red}\n"
        "  - {data: a.txt}\n"
        "  - just a string\n")
    with pytest.raises(UsageError) as info:
        load_suites(tmp_path / "s.yaml")
    message = str(info.value)
    for part in ("missing.txt' does not exist", "metric 'perplexity' does not apply to task 'classification'",
                 "unknown metric 'bleu'", "'max_examples' is 0", "unknown setting 'colour'",
                 "the name 'one' is used twice", "suite 4: 'name' is required",
                 "suite 4: give a task", "suite 5: a str, not a mapping"):
        assert part in message, part
    assert message.startswith("9 problem(s)")


@pytest.mark.parametrize("text,match", [("", "no suites"), ("suites: []", "no suites"),
                                        ("tests: []", "unknown top-level keys tests"),
                                        ("suites: [", "not valid YAML")])
def test_unusable_files(tmp_path, text, match):
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(UsageError, match=match):
        load_suites(tmp_path / "s.yaml")
    with pytest.raises(UsageError, match="does not exist"):
        load_suites(tmp_path / "nope.yaml")


def test_suites_are_selected_by_name(tmp_path):
    (tmp_path / "a.txt").write_text("x\n")
    path = tmp_path / "suites.json"
    path.write_text(json.dumps({"suites": [{"name": n, "data": "a.txt", "metric": "perplexity"}
                                           for n in ("one", "two", "three")]}))
    assert [s.name for s in load_suites(path, ["three", "one"])] == ["one", "three"]
    assert len(load_suites(path)) == 3
    with pytest.raises(UsageError, match=r"no suite named four .*\(its suites: one, two, three\)"):
        load_suites(path, ["one", "four"])
