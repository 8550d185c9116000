"""Review's third decision, specialist: the policy, modelgit.yaml's key, the override."""

from __future__ import annotations

import pytest
import yaml

from modelgit.errors import UsageError
from modelgit.workflow import Policy
from modelgit.workflow.policy import decide
from modelgit.workflow.project import Project, parse_project


def _score(gain: float, span=None) -> dict:
    return {"base": 10.0, "adapter": 10.0 * (1 - gain), "higher_is_better": False,
            "gain_interval": span, "confidence": 0.95}


def test_the_measured_case_is_a_specialist_not_a_rejection():
    # a shell LoRA: +25 % on shell text, Python text 2.7 % worse
    scores = {"shell": _score(0.25), "python": _score(-0.027)}
    decision, target, reasons = decide(scores, Policy(), "shell")
    assert (decision, target) == ("specialist", "shell")
    assert "specialist threshold 10.00%" in reasons[0] and "not merged" in reasons[0]
    assert any("python: regresses by 2.70%" in r for r in reasons[1:])
    # null disables it: the same adapter is rejected
    assert decide(scores, Policy(specialist_min_gain=None), "shell")[0] == "reject"


def test_a_specialist_needs_the_threshold_and_a_rejection_for_regressions_only():
    regressing = {"own": _score(0.08), "other": _score(-0.05)}
    assert decide(regressing, Policy(), "own")[0] == "reject"  # 8 % < 10 %
    assert decide(regressing, Policy(specialist_min_gain=0.05), "own")[0] == "specialist"
    # a gain below min_gain is a rejection for that, whatever the specialist threshold
    small = {"own": _score(0.02), "other": _score(-0.05)}
    assert decide(small, Policy(min_gain=0.03, specialist_min_gain=0.0), "own")[0] == "reject"
    # nothing regresses: accepted (merged), not a specialist
    assert decide({"own": _score(0.3), "other": _score(0.0)}, Policy(), "own")[0] == "accept"
    # a NaN score is never a specialist
    nan = {"own": {**_score(0.3), "adapter": float("nan")}, "other": _score(-0.05)}
    assert decide(nan, Policy(specialist_min_gain=-1.0), "own")[0] == "reject"


def test_modelgit_yaml_key_default_null_and_older_readers():
    assert Project().policy.specialist_min_gain == 0.10
    # at its default the key is not written: an older modelgit (which refuses unknown keys)
    # still reads the file
    assert "specialist_min_gain" not in Project().to_dict()["policy"]
    off = parse_project({"policy": {"specialist_min_gain": None}})
    assert off.policy.specialist_min_gain is None
    assert off.to_dict()["policy"]["specialist_min_gain"] is None
    assert parse_project(yaml.safe_load(yaml.safe_dump(off.to_dict()))).policy == off.policy
    assert parse_project({"policy": {"specialist_min_gain": 0.2}}).policy.specialist_min_gain == 0.2
    with pytest.raises(UsageError, match="policy.specialist_min_gain"):
        parse_project({"policy": {"specialist_min_gain": "lots"}})
    with pytest.raises(UsageError, match="min_gain"):  # null only where null means something
        parse_project({"policy": {"min_gain": None}})
    with pytest.raises(UsageError, match="did you mean 'specialist_min_gain'"):
        parse_project({"policy": {"specialist_gain": 0.1}})
