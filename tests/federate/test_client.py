"""A client's side: the server's settings and LoRA are checked before anything is trained."""

from __future__ import annotations

import pytest

from modelgit.errors import UsageError
from modelgit.federate.local import RoundSettings, base_fingerprint, train_round

GOOD = {"server-round": 1, "steps": 2, "lr": 0.01, "batch-size": 2, "max-length": 32,
        "max-examples": 0, "seed": 1, "rank": 2, "alpha": 4.0, "fingerprint": "x" * 64,
        "fisher": False, "fisher-examples": 4, "threads": 1, "data-offset": 0}


def test_settings_out_of_limits_are_all_reported():
    settings = RoundSettings.parse(GOOD)
    assert settings.max_examples is None and settings.threads == 1 and settings.rank == 2
    bad = {**GOOD, "steps": 10 ** 9, "lr": float("nan"), "rank": True, "fisher": "yes"}
    del bad["fingerprint"]
    with pytest.raises(UsageError) as info:
        RoundSettings.parse(bad)
    for word in ("steps", "lr", "rank", "fingerprint", "fisher"):
        assert word in str(info.value)


def _lora(base):
    from modelgit.federate.initial import initial_lora

    return initial_lora(base, 2, 4.0, None, 0)


def test_a_client_on_another_base_refuses_before_training(tiny_base, client_data, tmp_path):
    data = next(iter(client_data.values()))
    with pytest.raises(UsageError, match="is not the run's"):
        train_round(tiny_base, data, _lora(tiny_base), RoundSettings.parse(GOOD), str(tmp_path))


def test_a_lora_that_does_not_fit_the_base_is_refused(tiny_base, client_data, tmp_path):
    import torch

    lora = _lora(tiny_base)
    module = sorted(lora)[0]
    lora[module]["A"] = torch.zeros(2, 3)
    settings = RoundSettings.parse({**GOOD, "fingerprint": base_fingerprint(tiny_base)})
    with pytest.raises(UsageError, match=f"does not fit this client's base: module '{module}'"):
        train_round(tiny_base, next(iter(client_data.values())), lora, settings, str(tmp_path))


def test_a_round_trains_from_the_servers_lora(tiny_base, client_data, tmp_path):
    lora = _lora(tiny_base)
    settings = RoundSettings.parse({**GOOD, "fingerprint": base_fingerprint(tiny_base),
                                    "fisher": True})
    result = train_round(tiny_base, next(iter(client_data.values())), lora, settings,
                         str(tmp_path), progress=False)
    assert result.examples == 24 and set(result.lora) == set(lora) == set(result.fisher)
    for module, parts in lora.items():  # B starts at zero (PEFT's init) and moved
        assert not parts["B"].any() and result.lora[module]["B"].any()
        assert result.lora[module]["A"].shape == parts["A"].shape
        assert all((f >= 0).all() for f in result.fisher[module].values())


def test_rounds_walk_one_shuffled_order_of_the_clients_data(tiny_base, client_data, tmp_path,
                                                            monkeypatch):
    from modelgit.adapters import _batches, training
    from modelgit.federate import FederateConfig
    from modelgit.federate.strategy import round_settings

    plans, loop = [], training._loop
    monkeypatch.setattr(training, "_loop", lambda model, plan, *rest: plans.append(plan)
                        or loop(model, plan, *rest))
    lora, fingerprint = _lora(tiny_base), base_fingerprint(tiny_base)
    config = FederateConfig(steps=3, batch_size=4, seed=5, lr=0.01, rank=2, alpha=4.0)
    for number in (1, 2, 3):
        sent = {**round_settings(config, number, fingerprint), "threads": 1}
        train_round(tiny_base, next(iter(client_data.values())), lora, RoundSettings.parse(sent),
                    str(tmp_path / f"round-{number}"), progress=False)
    # three rounds of 3 steps = one 9-step run's order: 36 draws of 24 examples, each seen once
    # before any is seen twice (a fresh order per round would repeat some in the first 24)
    walked = [batch for plan in plans for batch in plan]
    assert walked == _batches.batch_plan(24, 4, 5, 9, None)
    assert sorted(i for batch in walked[:6] for i in batch) == list(range(24))


def test_cli_table_shows_rounds_exclusions_and_scores():
    from modelgit.cli.federate_commands import _table
    from modelgit.federate.server import FederateResult

    evaluation = [{"suite": "animals", "metric": "perplexity", "value": 9.5}]
    record = {"round": 2, "participants": [{"client": "c-1"}, {"client": "c-2"}],
              "excluded": [{"client": "c-3", "reason": "NaN or infinite values"}],
              "bytes": {"down": 300, "up": 200}, "seconds": 1.25, "evaluation": evaluation}
    result = FederateResult("r", "fed/r", 2, (record,),
                            ({"suite": "animals", "metric": "perplexity", "value": 12.0},))
    lines = _table(result).splitlines()
    assert lines[0].split() == ["round", "clients", "excluded", "down", "B", "up", "B", "s",
                                "animals"]
    assert lines[1].split() == ["base", "12"] and lines[2].split() == \
        ["2", "2", "1", "300", "200", "1.2", "9.5"]
    assert lines[3] == "round 2: excluded c-3: NaN or infinite values"
