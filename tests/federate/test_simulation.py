"""`modelgit federate` end to end on Flower's Ray simulation: 3 clients, 2 rounds, a stop and a
resume (the one test that starts Ray; the rest run the same server loop in process)."""

from __future__ import annotations

import json

import pytest

from modelgit.cli.main import main


def _run(capsys, repo, client_data, suites, *extra, run="sim"):
    clients = [f"{name}={path}" for name, path in client_data.items()]
    code = main(["federate", repo.root, "--clients", *clients, "--run", run, "--rounds", "2",
                 "--rank", "4", "--alpha", "8", "--steps", "4", "--lr", "0.02", "--threads", "1",
                 "--suites", suites, "--json", *extra])
    assert code == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow  # two Ray start-ups: a minute or two on 2 loaded cores
def test_three_clients_two_rounds_stopped_and_resumed(capsys, model_repo, client_data,
                                                      suites_file):
    first = _run(capsys, model_repo, client_data, suites_file, "--stop-after", "1")
    assert [r["round"] for r in first["rounds"]] == [1] and first["resumed_from"] == 1
    assert model_repo.rev_parse("fed/sim~1") == model_repo.rev_parse("HEAD")
    second = _run(capsys, model_repo, client_data, suites_file)
    assert second["resumed_from"] == 2 and [r["round"] for r in second["rounds"]] == [2]
    record = json.loads(model_repo.git("show", "fed/sim:federated/sim/round.json"))
    assert record["round"] == 2 and len(record["participants"]) == 3 and not record["excluded"]
    assert {p["examples"] for p in record["participants"]} == {24}
    assert all(p["client"].startswith("c-") for p in record["participants"])
    who = json.dumps([record["participants"], record["excluded"]])
    assert not any(name in who for name in client_data)  # clients are anonymous
    assert not any(path in json.dumps(record) for path in client_data.values())
    assert record["bytes"]["up"] == record["bytes"]["down"] > 0
    # the held-out perplexity falls from the base's after federated training
    base = {e["suite"]: e["value"] for e in record["base"]["evaluation"]}
    after = {e["suite"]: e["value"] for e in record["evaluation"]}
    assert set(after) == set(base) == set(client_data)
    assert sum(after.values()) < sum(base.values())
    log = model_repo.git("log", "--format=%s", "fed/sim").decode().splitlines()
    assert log[:2] == ["federated run sim: round 2 (fedavg, 3 clients, 0 excluded)",
                       "federated run sim: round 1 (fedavg, 3 clients, 0 excluded)"]
    best = second["best_round"]  # over both invocations' rounds
    assert best["last_round"] == 2 and best["round"] in (1, 2) and best["mean_gain"] > 0
    assert best["commit"] == model_repo.rev_parse(f"fed/sim~{2 - best['round']}")
    # another run of the recipe, in one go (other salt, so other anonymous ids and order of
    # replies; other Flower node ids): the same adapter, bit for bit, as the stopped and resumed one
    _run(capsys, model_repo, client_data, suites_file, run="again")
    adapter = "federated/{}/adapter/adapter_model.safetensors"
    assert model_repo.git("show", "fed/sim:" + adapter.format("sim")) == \
        model_repo.git("show", "fed/again:" + adapter.format("again"))


def test_cli_refusals_name_what_to_fix(capsys, model_repo, client_data):
    clients = [f"{n}={p}" for n, p in client_data.items()]
    assert main(["federate", model_repo.root, "--clients", *clients, "--method", "fedavgg"]) != 0
    assert "did you mean fedavg?" in capsys.readouterr().err
    assert main(["federate", model_repo.root]) != 0
    assert "--client NAME=DATA_PATH" in capsys.readouterr().err
    assert main(["federate", model_repo.root, "--clients", clients[0], "--min-clients", "2"]) != 0
    assert "fewer than --min-clients 2" in capsys.readouterr().err
    assert main(["federate", model_repo.root, "--clients", "a=/nonexistent", "b=/nowhere"]) != 0
    assert "client data not found" in capsys.readouterr().err
    assert main(["federate", model_repo.root, "--clients", *clients, "--run", "../x"]) != 0
    assert "not a valid name" in capsys.readouterr().err
