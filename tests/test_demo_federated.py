"""`modelgit demo --federated`: the table's arithmetic, and the quick demo end to end."""

from __future__ import annotations

import json

import pytest

from modelgit.demo_federated import format_table, kept_gains


def test_kept_gains_are_shares_of_the_central_gain():
    base = {"a": 20.0, "b": 10.0}
    kept = kept_gains(base, {"a": 15.0, "b": 9.0}, {"a": 10.0, "b": 10.0})
    assert kept["a"] == 0.5 and kept["b"] is None  # the central LoRA gained nothing on b
    assert kept["mean"] == pytest.approx((15 - 12) / (15 - 10))


def test_table_lists_base_rounds_and_central():
    figures = {"method": "fedavg", "base": {"a": 20.0}, "central": {"a": 10.0},
               "rounds": [{"round": 1, "perplexity": {"a": 15.0}, "kept": {"a": 0.5, "mean": 0.5}},
                          {"round": 2, "perplexity": {"a": 12.0}, "kept": {"a": 0.8, "mean": 0.8}}],
               "kept": {"a": 0.8, "mean": 0.8}}
    text = format_table(figures)
    import re

    assert re.search(r"^base +20\.00 +20\.00$", text, re.M)
    assert re.search(r"^round 1 \(fedavg\) +15\.00 +15\.00 +50%$", text, re.M)
    assert re.search(r"^round 2 \(fedavg\) +12\.00 +12\.00 +80%$", text, re.M)
    assert re.search(r"^central LoRA \(union\) +10\.00 +10\.00 +100%$", text, re.M)
    assert "keeps 80% of the central LoRA's perplexity gain on a\n" in text
    assert text.endswith("keeps 80% of the central LoRA's perplexity gain on average")


def test_the_rounds_are_compared_with_the_strongest_central_checkpoint():
    import re

    from modelgit.demo_federated import _strongest

    curve = [{"steps": 50, "perplexity": {"a": 14.0, "b": 9.0}},
             {"steps": 100, "perplexity": {"a": 10.0, "b": 8.0}},  # strongest: mean 9
             {"steps": 150, "perplexity": {"a": 9.0, "b": 9.5}}]  # overfits b: mean 9.25
    assert _strongest(curve)["steps"] == 100
    assert _strongest([*curve, {"steps": 200, "perplexity": {"a": 9.0, "b": 9.0}}])["steps"] == 200
    base, last = {"a": 20.0, "b": 10.0}, {"a": 11.0, "b": 8.5}
    figures = {"method": "fedavg", "base": base, "central": curve[1]["perplexity"],
               "central_steps": 100, "central_curve": curve,
               "rounds": [{"round": 1, "perplexity": last, "kept": kept_gains(base, last, curve[1]["perplexity"])}],
               "kept": kept_gains(base, last, curve[1]["perplexity"])}
    text = format_table(figures)
    assert re.search(r"^central LoRA \(union\), 50 steps +14\.00 +9\.00 +11\.50 +58%$", text, re.M)
    assert re.search(r"^central LoRA \(union\), 100 steps \(strongest\) .* 100%$", text, re.M)
    assert "keeps 90% of the strongest central checkpoint's (100 steps) perplexity gain on a" in text


@pytest.mark.slow  # Ray and three clients on a tiny model: about two minutes on 2 loaded cores
def test_quick_federated_demo(capsys, tmp_path):
    pytest.importorskip("flwr")
    from modelgit.cli.main import main

    assert main(["demo", "--federated", "--quick", "--json", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    figures = json.loads(out[out.index("\n{") + 1:])
    assert [r["round"] for r in figures["rounds"]] == [1, 2]
    assert set(figures["base"]) == set(figures["central"]) == {"python", "debian", "manpages"}
    for domain, base in figures["base"].items():  # both learn something on every domain
        assert figures["rounds"][-1]["perplexity"][domain] < base
        assert figures["central"][domain] < base
    assert figures["rounds"][0]["bytes"]["down"] < figures["full_weights_bytes"]
    # the central LoRA evaluated every 20 of its 60 steps; the rounds against the strongest
    assert [p["steps"] for p in figures["central_curve"]] == [20, 40, 60]
    strongest = next(p for p in figures["central_curve"] if p["steps"] == figures["central_steps"])
    assert figures["central"] == strongest["perplexity"]
    assert f"{figures['central_steps']} steps (strongest)" in out


def test_a_central_lora_is_reused_only_from_the_same_central_settings():
    from dataclasses import asdict, replace

    from modelgit.demo_federated import FULL, _check_reusable
    from modelgit.errors import UsageError

    earlier = {"base": {"a": 1.0, "b": 1.0, "c": 1.0}, "central": {"a": 0.5},
               "central_seconds": 9.0, "settings": asdict(FULL)}
    # other rounds x steps with the same total, another aggregation: the same central LoRA
    _check_reusable(earlier, replace(FULL, rounds=FULL.rounds * 3, steps=FULL.steps // 3,
                                     method="fedavg_full", server_lr=3.0))
    # more rounds against the same central LoRA: its steps named
    total = FULL.rounds * FULL.steps * 3
    _check_reusable(earlier, replace(FULL, rounds=20, steps=5, central_steps=total))
    with pytest.raises(UsageError, match="central LoRA was trained with"):
        _check_reusable(earlier, replace(FULL, rounds=20, steps=5))
    with pytest.raises(UsageError, match="central LoRA was trained with"):
        _check_reusable(earlier, replace(FULL, lr=FULL.lr * 2))
    with pytest.raises(UsageError, match="lack the central LoRA"):
        _check_reusable({"base": {}, "settings": {"rounds": 1}}, FULL)


def test_rounds_are_rescored_against_another_runs_central_lora_and_the_best_round_is_named():
    from modelgit.demo_federated import score_rounds

    base = {"a": 20.0, "b": 10.0}
    rounds = [{"round": 1, "perplexity": {"a": 12.0, "b": 8.0}},  # mean 10: the best
              {"round": 2, "perplexity": {"a": 14.0, "b": 8.5}}]
    figures = {"method": "fedavg", "base": base, "rounds": rounds,
               "central": {"a": 19.0, "b": 9.9}, "central_steps": 30}
    other = {"central": {"a": 10.0, "b": 8.0}, "central_curve": [
        {"steps": 100, "perplexity": {"a": 11.0, "b": 9.0}},
        {"steps": 200, "perplexity": {"a": 10.0, "b": 8.0}}]}
    scored = score_rounds(figures, other)
    assert scored["central_steps"] == 200 and scored["central"] == {"a": 10.0, "b": 8.0}
    assert scored["kept"] == kept_gains(base, rounds[1]["perplexity"], {"a": 10.0, "b": 8.0})
    assert scored["best_round"] == {"round": 1, "kept": {"a": 0.8, "b": 1.0,
                                                         "mean": pytest.approx(5 / 6)}}
    assert "the best round by mean held-out perplexity, round 1, keeps 80% / 100% / 83% " \
        "(a / b / mean)" in format_table(scored)
    # an earlier run without a curve: its one central LoRA
    assert score_rounds(figures, {"central": {"a": 15.0, "b": 9.0},
                                  "central_steps": 50})["central_steps"] == 50
