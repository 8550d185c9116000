"""Several models evaluated at once: the same results as one by one; each failure its own."""

from __future__ import annotations

import pytest

from modelgit.adapters import TrainConfig, train
from modelgit.eval import SuiteConfig
from modelgit.eval.parallel import EvalFailure, EvalJob, evaluate_jobs, plan_workers


@pytest.fixture(scope="module")
def adapter(lm_base, lm_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "lm"
    train(TrainConfig(base=lm_base, data=lm_data, output=str(out), steps=5, lr=1e-2, threads=1))
    return str(out)


def test_workers_give_the_results_of_one_process_and_isolate_failures(lm_base, lm_data, adapter,
                                                                      tmp_path):
    suite = SuiteConfig(name="t", data=lm_data, task="causal_lm", metric="perplexity")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{}")  # no weights: a FormatError when loaded
    jobs = [EvalJob(lm_base, None, (suite,)), EvalJob(lm_base, adapter, (suite,)),
            EvalJob(lm_base, str(broken), (suite,))]
    here = evaluate_jobs(jobs, workers=1)
    there = evaluate_jobs(jobs, workers=2)
    for a, b in zip(here[:2], there[:2]):
        assert [r["value"] for r in a] == [r["value"] for r in b]
        assert a[0]["interval"] == b[0]["interval"] and a[0]["documents"] == b[0]["documents"]
    for failed in (here[2], there[2]):
        assert isinstance(failed, EvalFailure) and failed.expected
        assert "adapter_model.safetensors" in failed.message


def test_tiny_work_stays_in_this_process(lm_base, lm_data):
    suite = SuiteConfig(name="t", data=lm_data, task="causal_lm", metric="perplexity")
    assert plan_workers([EvalJob(lm_base, None, (suite,))] * 4) == 1
