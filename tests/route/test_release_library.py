"""A release's library record read as untrusted input (the end-to-end path is in
tests/workflow/test_library_release.py)."""

from __future__ import annotations

from modelgit.route.release_library import _shape_problems

_HEX = "ab" * 32


def _record(**adapter):
    entry = {"name": "shell-lora", "path": "contributions/shell-lora", "adapter_id": _HEX, **adapter}
    return {"base": {"commit": "c" * 40, "fingerprint": _HEX, "model": "model"},
            "adapters": [entry], "refused": []}


def test_a_well_formed_library_record_passes():
    assert _shape_problems(_record()) == []


def test_paths_names_and_ids_of_a_hostile_record_are_refused():
    for bad, expected in (({"path": "../../etc"}, "adapter path"),
                          ({"path": "contributions/.git/x"}, "adapter path"),
                          ({"name": "base"}, "reserved"),
                          ({"name": "../x"}, "not usable"),
                          ({"adapter_id": "not-hex"}, "lacks a path or content id")):
        problems = _shape_problems(_record(**bad))
        assert problems and expected in problems[0], (bad, problems)
    escaped = _record()
    escaped["base"]["model"] = "/etc"
    assert "its base is not" in _shape_problems(escaped)[0]
    assert _shape_problems([]) == ["it is not an object"]
