"""The base model's evaluations are remembered per (weights, suite settings, data bytes)."""

from __future__ import annotations

import shutil
from dataclasses import replace

from workflow_helpers import model_dir

import modelgit.eval
from modelgit.fingerprint import fingerprint_rev
from modelgit.workflow.basecache import evaluate_base


def test_the_same_base_suite_and_data_are_evaluated_once(hub, suites, tmp_path, monkeypatch):
    repo, _ = hub
    calls = []
    real = modelgit.eval.evaluate_suites

    def counting(model, adapter, chosen, progress=False):
        calls.append([s.name for s in chosen])
        return real(model, adapter, chosen, progress)

    monkeypatch.setattr(modelgit.eval, "evaluate_suites", counting)
    fp = fingerprint_rev(repo, "HEAD", "model")
    first = evaluate_base(repo, model_dir(repo), fp, suites)
    again = evaluate_base(repo, model_dir(repo), fp, suites)
    assert calls == [[s.name for s in suites]]
    assert [r["value"] for r in again] == [r["value"] for r in first]

    # other settings, other data bytes or other weights: evaluated anew
    evaluate_base(repo, model_dir(repo), fp, [replace(suites[0], max_length=16)])
    changed = tmp_path / "changed.jsonl"
    shutil.copyfile(suites[1].data, changed)
    with open(changed, "a") as handle:
        handle.write('{"text": "one more line"}\n')
    evaluate_base(repo, model_dir(repo), fp, [replace(suites[1], data=str(changed))])
    evaluate_base(repo, model_dir(repo), "0" * 64, suites[:1])
    assert calls[1:] == [[suites[0].name], [suites[1].name], [suites[0].name]]
