"""The server's loop over an in-process Flower grid: real ClientApp, real commits, hostile nodes.

Flower's Ray simulation is exercised once (test_simulation.py); here the same ServerApp logic
(:func:`run_rounds`) runs over a Grid that delivers messages in this process, so each kind of
bad client can be built exactly as an attacker or a broken node would send it.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from modelgit.errors import UsageError

SETTINGS = {"rank": 4, "alpha": 8.0, "steps": 4, "lr": 2e-2, "batch_size": 4, "threads": 1,
            "min_clients": 2}


def _config(repo, **extra):
    from modelgit.federate import FederateConfig

    return FederateConfig(repo=repo.root, **{**SETTINGS, "rounds": 1, "run": "t", **extra})


def _record(repo, rev="fed/t"):
    return json.loads(repo.git("show", f"{rev}:federated/t/round.json"))


def _anon(repo, node, run="t"):
    from modelgit.federate.strategy import anonymizer

    with open(os.path.join(repo.git_dir, "modelgit", "federate", f"{run}.salt")) as handle:
        return anonymizer(handle.read().strip())(node)


def _honest(grid_app, partition=0, capture=None):
    """A behaviour: the real client training on partition ``partition``'s data."""
    def behave(message, context):
        from flwr.app import Context

        context = Context(run_id=1, node_id=context.node_id, state=context.state, run_config={},
                          node_config={"partition-id": partition})
        reply = grid_app(message, context)
        if capture is not None:
            capture.append(reply)
        return reply
    return behave


def _tampered(grid_app, change):
    """A behaviour: honest training, then ``change(arrays_dict)`` on the reply's LoRA."""
    def behave(message, context):
        from flwr.app import Array, ArrayRecord

        reply = _honest(grid_app)(message, context)
        arrays = {k: reply.content["arrays"][k].numpy() for k in reply.content["arrays"].keys()}
        change(arrays)
        reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        return reply
    return behave


def _first(arrays):
    return sorted(arrays)[0]


def _with(arrays, value):
    arrays[_first(arrays)] = np.full_like(arrays[_first(arrays)], value)


def _wrong_shape(arrays):
    key = _first(arrays)
    arrays[key] = np.zeros((arrays[key].shape[0] + 1, arrays[key].shape[1]), np.float32)


def _outlier(arrays):
    for key in arrays:
        arrays[key] = arrays[key] * 1000


def _wrong_base(grid_app):
    def behave(message, context):
        from flwr.app import ConfigRecord

        reply = _honest(grid_app)(message, context)
        reply.content["config"] = ConfigRecord({"fingerprint": "f" * 64})
        return reply
    return behave


def _crash(message, context):
    raise ConnectionError("the node went away mid-round")


def test_bad_clients_are_excluded_with_reasons(grid, model_repo):
    from modelgit.federate.server import run_rounds

    honest = []
    g = grid()
    app = g.app
    g.behaviours = {11: _honest(app, 0, honest), 12: _honest(app, 1, honest),
                    13: _honest(app, 2, honest),
                    21: _tampered(app, lambda a: _with(a, np.nan)),
                    22: _tampered(app, lambda a: _with(a, np.inf)),
                    23: _tampered(app, _wrong_shape), 24: _wrong_base(app),
                    25: lambda m, c: None, 26: _crash, 27: _tampered(app, _outlier)}
    g.nodes = [11, 12, 13, 21, 22, 23, 24, 25, 26, 27]
    result = run_rounds(g, _config(model_repo, min_clients=3))
    record = _record(model_repo)
    assert result.rounds[0]["round"] == record["round"] == 1
    assert sorted(p["client"] for p in record["participants"]) == \
        sorted(_anon(model_repo, n) for n in (11, 12, 13))
    reasons = {e["client"]: e["reason"] for e in record["excluded"]}
    expected = {21: "NaN or infinite", 22: "NaN or infinite", 23: "wrong shape",
                24: "trained on another base", 25: "no reply before the round's timeout",
                26: "the node went away", 27: "is an outlier"}
    assert {c: r for c, r in reasons.items()} .keys() == {_anon(model_repo, n) for n in expected}
    for node, text in expected.items():
        assert text in reasons[_anon(model_repo, node)], (node, reasons)
    # the aggregate is FedAvg of the three honest clients only (equal example counts)
    from modelgit.federate.payload import arrays_to_lora
    from modelgit.merge.lora import load_adapter

    mean = {}
    for reply in honest:
        for module, parts in arrays_to_lora(reply.content["arrays"]).items():
            for kind, tensor in parts.items():
                mean.setdefault((module, kind), []).append(tensor)
    out = os.path.join(model_repo.root, "..", "exported")
    from modelgit.workflow.gitops import export_dir

    adapter = load_adapter(export_dir(model_repo, "fed/t", "federated/t/adapter", out))
    for (module, kind), tensors in mean.items():
        torch.testing.assert_close(adapter.lora[module][kind], sum(tensors) / 3)
    assert record["bytes"]["down"] == 10 * record["participants"][0]["bytes_up"]
    assert "maintainer" not in json.dumps(record) and "animals" not in json.dumps(record)


def test_round_below_the_minimum_fails_and_commits_nothing(grid, model_repo):
    from modelgit.federate.server import run_rounds
    from modelgit.federate.strategy import RoundFailed

    g = grid(extra={21: _crash})
    with pytest.raises(RoundFailed, match=r"round 1 has 3 accepted client\(s\) of 4 sent, below "
                                          r"the minimum of 4 .*went away.*nothing was committed"):
        run_rounds(g, _config(model_repo, min_clients=4))
    assert model_repo.rev_parse("refs/heads/fed/t") is None


def test_a_stopped_run_resumes_from_its_last_committed_round(grid, model_repo):
    from modelgit.federate.payload import arrays_to_lora
    from modelgit.federate.server import run_rounds
    from modelgit.merge.lora import load_adapter
    from modelgit.workflow.gitops import export_dir

    first = run_rounds(grid(), _config(model_repo, rounds=3, stop_after=1))
    assert [r["round"] for r in first.rounds] == [1]
    tip = model_repo.rev_parse("fed/t")
    saved = load_adapter(export_dir(model_repo, tip, "federated/t/adapter",
                                    os.path.join(model_repo.root, "..", "r1"))).lora
    again = grid()
    second = run_rounds(again, _config(model_repo, rounds=3))
    assert second.resumed_from == 2 and [r["round"] for r in second.rounds] == [2, 3]
    sent = arrays_to_lora(again.sent[0].content["arrays"])  # round 2 starts from round 1's
    for module, parts in saved.items():
        torch.testing.assert_close(sent[module]["A"], parts["A"].float())
        torch.testing.assert_close(sent[module]["B"], parts["B"].float())
    log = model_repo.git("log", "--format=%s", "fed/t").decode().splitlines()
    assert log[:3] == [f"federated run t: round {n} (fedavg, 3 clients, 0 excluded)"
                       for n in (3, 2, 1)]
    assert model_repo.rev_parse("fed/t~2") == tip
    done = run_rounds(grid(), _config(model_repo, rounds=3))
    assert done.rounds == () and model_repo.rev_parse("fed/t~2") == tip


def test_the_best_round_of_the_whole_branch_is_named_and_can_be_contributed(grid, model_repo,
                                                                            suites_file):
    import subprocess

    from modelgit.federate.best import mean_gain
    from modelgit.federate.server import run_rounds
    from modelgit.workflow.contribution import contribute

    run_rounds(grid(), _config(model_repo, rounds=2, stop_after=1, suites=suites_file))
    second = run_rounds(grid(), _config(model_repo, rounds=2, suites=suites_file))
    gains = {n: mean_gain(_record(model_repo, f"fed/t~{2 - n}"))[0] for n in (1, 2)}
    best = second.best  # over both invocations' rounds, read back from the commits
    assert best["round"] == max(gains, key=gains.get) and best["last_round"] == 2
    assert best["commit"] == model_repo.rev_parse(f"fed/t~{2 - best['round']}")
    assert best["mean_gain"] == pytest.approx(gains[best["round"]])
    assert run_rounds(grid(), _config(model_repo, rounds=2, suites=suites_file)).best == best
    # the command the CLI prints for a round that is not the last: a worktree, then contribute
    tree = os.path.join(model_repo.root, "..", "round")
    subprocess.run(["git", "-C", model_repo.root, "worktree", "add", "-q", "--detach", tree,
                    best["commit"]], check=True)
    made = contribute(model_repo, os.path.join(tree, "federated", "t", "adapter"), "fed-t-best",
                      "the best round", author="Maintainer <m@example.org>", domain=None)
    assert made.branch == "contrib/fed-t-best"


@pytest.mark.parametrize("where", ["training", "commit"])
def test_a_run_killed_mid_round_resumes_from_its_last_committed_round(grid, model_repo, tiny_base,
                                                                     client_data, tmp_path, where):
    """kill -9 while the clients train round 2, or once its commit object is written but before
    the branch moves: the branch keeps round 1, and the same command resumes at round 2."""
    import subprocess
    import sys

    from modelgit.federate.server import run_rounds

    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = {"repo": model_repo.root, **SETTINGS, "rounds": 3, "run": "t"}
    setup = tmp_path / "setup.json"
    setup.write_text(json.dumps({"tests": tests, "base": tiny_base, "config": config,
                                 "datasets": list(client_data.values()), "round": 2,
                                 "where": where}))
    killed = subprocess.run([sys.executable, os.path.join(tests, "federate", "killed_run.py"),
                             str(setup)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _record(model_repo)["round"] == 1  # nothing of round 2 on the branch
    scratch = os.path.join(model_repo.git_dir, "modelgit", "tmp")
    assert os.listdir(scratch)  # the dead process's scratch directory is still there
    resumed = run_rounds(grid(), _config(model_repo, rounds=3))
    assert resumed.resumed_from == 2 and [r["round"] for r in resumed.rounds] == [2, 3]
    log = model_repo.git("log", "--format=%s", "fed/t").decode().splitlines()
    assert log[:3] == [f"federated run t: round {n} (fedavg, 3 clients, 0 excluded)"
                       for n in (3, 2, 1)]
    assert os.listdir(scratch) == []  # removed by the resumed run (its owner is gone)
    model_repo.git("fsck", "--no-dangling")


def test_a_resume_with_other_settings_is_refused(grid, model_repo):
    from modelgit.federate.server import run_rounds

    run_rounds(grid(), _config(model_repo, rounds=2, stop_after=1))
    with pytest.raises(UsageError, match=r"started with other settings \(method: 'fedavg'\)"):
        run_rounds(grid(), _config(model_repo, rounds=2, method="ties"))


@pytest.mark.parametrize("method", ["fedavg_full", "ties", "dare_ties", "median", "trimmed_mean",
                                    "fisher"])
def test_every_method_commits_a_loadable_adapter(grid, model_repo, suites_file, method):
    from modelgit.federate.server import run_rounds
    from modelgit.merge.lora import load_adapter
    from modelgit.workflow.gitops import export_dir

    result = run_rounds(grid(), _config(model_repo, method=method, suites=suites_file))
    record = _record(model_repo)
    assert record["method"] == method and len(record["participants"]) == 3
    assert [e["suite"] for e in record["evaluation"]] == ["animals", "cooking", "weather"]
    assert all(e["value"] > 1 for e in record["evaluation"] + record["base"]["evaluation"])
    assert result.base_evaluation[0]["value"] == record["base"]["evaluation"][0]["value"]
    adapter = load_adapter(export_dir(model_repo, "fed/t", "federated/t/adapter",
                                      os.path.join(model_repo.root, "..", "out")))
    assert adapter.config["r"] == 4 and all(p["A"].shape[0] == 4 for p in adapter.lora.values())
    per_client = record["participants"][0]["bytes_up"]
    if method == "fisher":  # the Fisher of every factor travels too
        assert per_client == 2 * record["bytes"]["down"] // 3
    else:
        assert per_client == record["bytes"]["down"] // 3


def test_the_last_round_is_contributed_like_any_adapter(grid, model_repo):
    from modelgit.federate.server import run_rounds
    from modelgit.workflow.contribution import contribute
    from modelgit.workflow.gitops import export_dir

    run_rounds(grid(), _config(model_repo))
    adapter = export_dir(model_repo, "fed/t", "federated/t/adapter",
                         os.path.join(model_repo.root, "..", "to-contribute"))
    made = contribute(model_repo, adapter, "fed-t", "the federated run t, round 1",
                      author="Maintainer <m@example.org>", domain=None)
    assert made.branch == "contrib/fed-t"
    assert model_repo.rev_parse("refs/heads/contrib/fed-t")


def test_outliers_leave_the_honest_spread_of_few_clients_alone():
    from modelgit.federate.aggregate import ClientUpdate
    from modelgit.federate.screen import _outliers

    updates = [ClientUpdate(c, 1, {}) for c in "abcd"]
    # the norms of three honest non-IID SmolLM2 clients, measured: the raw MAD (0.1) is tiny
    honest = {"a": 3.24, "b": 3.345, "c": 3.663}
    assert _outliers(updates[:3], honest, 3.0) == {}
    poisoned = {**honest, "d": 3345.0}
    assert list(_outliers(updates, poisoned, 3.0)) == ["d"]
    assert _outliers(updates, poisoned, 0.0) == {}  # k = 0: off


def test_server_lr_extrapolates_the_round_step_and_is_recorded(grid, model_repo):
    from modelgit.federate.payload import arrays_to_lora
    from modelgit.federate.server import run_rounds
    from modelgit.merge.lora import load_adapter
    from modelgit.workflow.gitops import export_dir

    def committed(run):
        out = os.path.join(model_repo.root, "..", f"out-{run}")
        lora = load_adapter(export_dir(model_repo, f"fed/{run}", f"federated/{run}/adapter", out))
        return lora.lora

    plain_grid = grid()
    run_rounds(plain_grid, _config(model_repo, run="plain"))
    run_rounds(grid(), _config(model_repo, run="fast", server_lr=2.0))
    start = arrays_to_lora(plain_grid.sent[0].content["arrays"])
    plain, fast = committed("plain"), committed("fast")
    for module, parts in start.items():
        for kind in ("A", "B"):  # the same seeded clients: the same step, taken twice as far
            expected = parts[kind] + 2.0 * (plain[module][kind].float() - parts[kind])
            torch.testing.assert_close(fast[module][kind].float(), expected, atol=1e-5, rtol=1e-4)
    record = json.loads(model_repo.git("show", "fed/fast:federated/fast/round.json"))
    assert record["recipe"]["server_lr"] == 2.0


@pytest.fixture
def server_lrs(monkeypatch):
    """The server learning rate of every round aggregated while the test runs, in order."""
    from modelgit.federate import strategy

    used = []
    real = strategy.aggregate

    def spy(*args, **kwargs):
        used.append(kwargs["server_lr"])
        return real(*args, **kwargs)

    monkeypatch.setattr(strategy, "aggregate", spy)
    return used


def test_server_lr_decays_every_round_and_a_resume_keeps_the_decay(grid, model_repo, server_lrs):
    from modelgit.federate.server import run_rounds

    run_rounds(grid(), _config(model_repo, rounds=3, server_lr=2.0, server_lr_decay=0.5,
                               stop_after=2))
    run_rounds(grid(), _config(model_repo, rounds=3, server_lr=2.0, server_lr_decay=0.5))
    assert server_lrs == [2.0, 1.0, 0.5]  # round 3, after the resume, continues the decay
    assert _record(model_repo)["recipe"]["server_lr_decay"] == 0.5
    with pytest.raises(UsageError, match=r"other settings \(server_lr_decay: 0.5\)"):
        run_rounds(grid(), _config(model_repo, rounds=4, server_lr=2.0))


def test_server_lr_holds_for_the_first_rounds_then_decays(grid, model_repo, server_lrs):
    from modelgit.federate.server import run_rounds

    run_rounds(grid(), _config(model_repo, rounds=3, server_lr=2.0, server_lr_decay=0.5,
                               server_lr_hold=2))
    assert server_lrs == [2.0, 2.0, 1.0]
    assert _record(model_repo)["recipe"]["server_lr_hold"] == 2


def test_two_runs_of_one_recipe_commit_the_same_adapters(grid, model_repo):
    """Each run has its own salt, so its clients' anonymous ids, and so the order of their
    replies, differ: the rounds' adapters must not (before, rounding in the aggregate's sums
    differed with the order, and runs drifted apart round by round)."""
    from modelgit.federate.server import run_rounds
    from modelgit.merge.lora import load_adapter
    from modelgit.workflow.gitops import export_dir

    loras = []
    for run in ("a", "b", "c"):
        run_rounds(grid(), _config(model_repo, rounds=2, run=run, method="fedavg_full"))
        loras.append(load_adapter(export_dir(model_repo, f"fed/{run}", f"federated/{run}/adapter",
                                             os.path.join(model_repo.root, "..", run))).lora)
    for other in loras[1:]:
        for module, parts in loras[0].items():
            assert torch.equal(parts["A"], other[module]["A"]) and torch.equal(parts["B"], other[module]["B"])
