"""The aggregation functions, against direct computations of what each method means."""

from __future__ import annotations

import pytest
import torch

from modelgit.errors import UsageError
from modelgit.federate.aggregate import ClientUpdate, aggregate, full_update, update_norm

RANK, ALPHA = 2, 4.0
SCALE = ALPHA / RANK


def _lora(seed, out=5, inp=6, b_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {"m.q": {"A": torch.randn(RANK, inp, generator=g),
                    "B": torch.randn(out, RANK, generator=g) * b_scale}}


def _updates(n=3, examples=(10, 20, 30)):
    return [ClientUpdate(f"c{i}", examples[i], _lora(i + 1)) for i in range(n)]


def test_fedavg_is_the_example_weighted_mean_of_the_factors():
    ups = _updates()
    out = aggregate("fedavg", _lora(0), ups, rank=RANK, alpha=ALPHA)
    for kind in ("A", "B"):
        expected = (10 * ups[0].lora["m.q"][kind] + 20 * ups[1].lora["m.q"][kind]
                    + 30 * ups[2].lora["m.q"][kind]) / 60
        torch.testing.assert_close(out["m.q"][kind], expected)


def test_fedavg_full_is_the_mean_update_refactored_by_svd():
    # clients sharing A (as after a round where only B moved): the mean update has rank <= r,
    # so the re-factored LoRA reproduces it exactly
    shared = _lora(0)["m.q"]["A"]
    ups = [ClientUpdate(f"c{i}", 1, {"m.q": {"A": shared, "B": _lora(i + 1)["m.q"]["B"]}})
           for i in range(3)]
    out = aggregate("fedavg_full", _lora(0), ups, rank=RANK, alpha=ALPHA)
    mean = sum(full_update(u.lora["m.q"], SCALE) for u in ups) / 3
    torch.testing.assert_close(full_update(out["m.q"], SCALE), mean, atol=1e-5, rtol=1e-5)
    assert out["m.q"]["A"].shape == (RANK, 6) and out["m.q"]["B"].shape == (5, RANK)


def test_fedavg_full_keeps_the_best_rank_r_approximation():
    ups = _updates()
    out = aggregate("fedavg_full", _lora(0), ups, rank=RANK, alpha=ALPHA)
    mean = sum(w * full_update(u.lora["m.q"], SCALE) for w, u in zip((1 / 6, 2 / 6, 3 / 6), ups))
    u, s, vh = torch.linalg.svd(mean)
    best = (u[:, :RANK] * s[:RANK]) @ vh[:RANK]
    torch.testing.assert_close(full_update(out["m.q"], SCALE), best, atol=1e-5, rtol=1e-5)


def test_median_and_trimmed_mean_ignore_one_wild_client():
    ups = _updates(5, (1,) * 5)
    wild = ClientUpdate("w", 1, _lora(9, b_scale=1e4))
    median = aggregate("median", _lora(0), [*ups[:4], wild], rank=5, alpha=ALPHA * 2.5)
    stacked = torch.stack([full_update(u.lora["m.q"], ALPHA / RANK) for u in [*ups[:4], wild]])
    # rank 5 = min(out, in): the re-factoring is exact, so the median itself comes back
    torch.testing.assert_close(full_update(median["m.q"], ALPHA * 2.5 / 5),
                               stacked.median(dim=0).values, atol=1e-3, rtol=1e-4)
    assert full_update(median["m.q"], ALPHA * 2.5 / 5).abs().max() < 100
    trimmed = aggregate("trimmed_mean", _lora(0), [*ups[:4], wild], rank=5, alpha=ALPHA * 2.5,
                        trim=0.2)
    ordered = stacked.sort(dim=0).values[1:4].mean(dim=0)
    torch.testing.assert_close(full_update(trimmed["m.q"], ALPHA * 2.5 / 5), ordered,
                               atol=1e-3, rtol=1e-4)


def test_fisher_follows_the_client_that_is_sure():
    ups = _updates(2, (1, 1))
    sure = {k: torch.full_like(t, 1e6) for k, t in ups[0].lora["m.q"].items()}
    unsure = {k: torch.full_like(t, 1e-6) for k, t in ups[1].lora["m.q"].items()}
    fisher_ups = [ClientUpdate("a", 1, ups[0].lora, {"m.q": sure}),
                  ClientUpdate("b", 1, ups[1].lora, {"m.q": unsure})]
    out = aggregate("fisher", _lora(0), fisher_ups, rank=RANK, alpha=ALPHA)
    torch.testing.assert_close(out["m.q"]["A"], ups[0].lora["m.q"]["A"], atol=1e-5, rtol=1e-5)
    with pytest.raises(UsageError, match="needs every client's Fisher"):
        aggregate("fisher", _lora(0), ups, rank=RANK, alpha=ALPHA)


def test_ties_works_on_what_clients_changed_this_round():
    start = _lora(0)
    # two clients that changed nothing and one that did: TIES of task vectors keeps the change
    moved = {"m.q": {"A": start["m.q"]["A"], "B": start["m.q"]["B"] + 1.0}}
    ups = [ClientUpdate("a", 1, start), ClientUpdate("b", 1, start), ClientUpdate("c", 1, moved)]
    out = aggregate("ties", start, ups, rank=RANK, alpha=ALPHA, density=1.0)
    begin = full_update(start["m.q"], SCALE)
    change = full_update(moved["m.q"], SCALE) - begin
    # TIES normalises by the weights of the clients agreeing in sign: the mover alone
    torch.testing.assert_close(full_update(out["m.q"], SCALE), begin + change, atol=1e-4, rtol=1e-4)


def test_inputs_are_not_modified_and_empty_rounds_refused():
    ups = _updates()
    before = [{k: t.clone() for k, t in u.lora["m.q"].items()} for u in ups]
    for method in ("fedavg", "fedavg_full", "median", "ties"):
        aggregate(method, _lora(0), ups, rank=RANK, alpha=ALPHA)
    for u, b in zip(ups, before):
        for k in b:
            assert torch.equal(u.lora["m.q"][k], b[k])
    with pytest.raises(UsageError, match="no client update"):
        aggregate("fedavg", _lora(0), [], rank=RANK, alpha=ALPHA)


def test_update_norm_measures_the_change_from_the_round_start():
    start = _lora(0)
    moved = {"m.q": {"A": start["m.q"]["A"] + 3.0, "B": start["m.q"]["B"]}}
    assert update_norm(moved, start) == pytest.approx(3.0 * (RANK * 6) ** 0.5)


def test_server_lr_scales_the_averaged_step_of_the_factors():
    start, ups = _lora(0), _updates()
    plain = aggregate("fedavg", start, ups, rank=RANK, alpha=ALPHA)
    same = aggregate("fedavg", start, ups, rank=RANK, alpha=ALPHA, server_lr=1.0)
    assert all(torch.equal(same["m.q"][k], plain["m.q"][k]) for k in ("A", "B"))
    out = aggregate("fedavg", start, ups, rank=RANK, alpha=ALPHA, server_lr=3.0)
    for kind in ("A", "B"):
        expected = start["m.q"][kind] + 3.0 * (plain["m.q"][kind] - start["m.q"][kind])
        torch.testing.assert_close(out["m.q"][kind], expected)


def test_server_lr_on_full_updates_scales_before_refactoring():
    # clients sharing the start's A: the start, the mean and the step all have rank <= r, so the
    # re-factored global is exactly start + server_lr x (mean - start)
    start = _lora(0)
    shared = start["m.q"]["A"]
    ups = [ClientUpdate(f"c{i}", 1, {"m.q": {"A": shared, "B": _lora(i + 1)["m.q"]["B"]}})
           for i in range(3)]
    out = aggregate("fedavg_full", start, ups, rank=RANK, alpha=ALPHA, server_lr=2.5)
    begin = full_update(start["m.q"], SCALE)
    mean = sum(full_update(u.lora["m.q"], SCALE) for u in ups) / 3
    torch.testing.assert_close(full_update(out["m.q"], SCALE), begin + 2.5 * (mean - begin),
                               atol=1e-4, rtol=1e-4)
    before = {k: t.clone() for k, t in start["m.q"].items()}
    aggregate("median", start, ups, rank=RANK, alpha=ALPHA, server_lr=2.0)
    assert all(torch.equal(start["m.q"][k], before[k]) for k in before)


def test_server_lr_is_validated_and_part_of_the_recipe():
    from modelgit.federate import FederateConfig

    assert FederateConfig(server_lr=3.0).recipe()["server_lr"] == 3.0
    assert "server_lr_decay" not in FederateConfig().recipe()  # earlier runs' recipes still match
    assert FederateConfig(server_lr=3.0, server_lr_decay=0.9).server_lr_at(3) == \
        pytest.approx(3.0 * 0.81)
    for bad in (0.0, 1.5):
        assert any("server_lr_decay" in p for p in FederateConfig(server_lr_decay=bad).problems())
    held = FederateConfig(server_lr=3.0, server_lr_decay=0.5, server_lr_hold=2)
    assert [held.server_lr_at(n) for n in (1, 2, 3, 4)] == [3.0, 3.0, 1.5, 0.75]
    assert held.recipe()["server_lr_hold"] == 2
    assert "server_lr_hold" not in FederateConfig(server_lr_decay=0.5).recipe()
    assert "server_lr_hold" not in FederateConfig(server_lr_hold=5).recipe()  # nothing decays
    assert any("server_lr_hold" in p for p in FederateConfig(server_lr_hold=0).problems())
    for bad in (0.0, -1.0, 1000.0):
        assert any("server_lr" in p for p in FederateConfig(server_lr=bad).problems())


def _round(number, values, base=(10.0, 0.5), metrics=("perplexity", "accuracy")):
    names = ("ppl", "acc")
    return {"round": number,
            "evaluation": [{"suite": n, "metric": m, "value": v}
                           for n, m, v in zip(names, metrics, values)],
            "base": {"evaluation": [{"suite": n, "metric": m, "value": v}
                                    for n, m, v in zip(names, metrics, base)]}}


def test_the_best_round_is_the_largest_mean_relative_gain_whatever_each_metric_s_direction():
    from modelgit.federate.best import best_round, mean_gain

    # perplexity 10 -> 8 is +20%, accuracy 0.5 -> 0.6 is +20%: a mean gain of 20%
    assert mean_gain(_round(1, (8.0, 0.6)))[0] == pytest.approx(0.2)
    history = [("c1", _round(1, (9.0, 0.55))), ("c2", _round(2, (7.0, 0.60))),  # +25%
               ("c3", _round(3, (8.0, 0.55)))]                                   # +15%
    best = best_round(history)
    assert (best["round"], best["commit"], best["last_round"]) == (2, "c2", 3)
    assert best["mean_gain"] == pytest.approx(0.25) and best["last_mean_gain"] == pytest.approx(0.15)
    assert best["suites"] == ["acc", "ppl"]
    assert best_round(history[:1])["round"] == 1
    # equal gains: the later round (more training for the same score)
    assert best_round([("a", _round(1, (8.0, 0.6))), ("b", _round(2, (8.0, 0.6)))])["round"] == 2


def test_the_best_round_skips_what_cannot_be_compared():
    from modelgit.federate.best import best_round, mean_gain

    broken = _round(1, (float("nan"), "0.9"))  # no finite number: no gain at all
    assert mean_gain(broken) is None
    assert mean_gain(_round(1, (8.0, 0.6), base=(0.0, 0.5)))[1] == frozenset({"acc"})
    assert mean_gain({"round": 1}) is None and best_round([]) is None
    assert best_round([("a", {"round": 1, "evaluation": []})]) is None
    # a round scored on other suites than the last one is not compared with it
    other = _round(1, (1.0, 0.99), metrics=("perplexity", "macro_f1"))
    other["evaluation"][1]["suite"] = other["base"]["evaluation"][1]["suite"] = "f1"
    assert best_round([("a", other), ("b", _round(2, (9.0, 0.55)))])["round"] == 2


def test_the_cli_names_the_best_round_and_how_to_contribute_it():
    from modelgit.cli.federate_commands import _best
    from modelgit.federate.server import FederateResult

    best = {"round": 2, "commit": "ab" * 20, "mean_gain": 0.25, "last_round": 3,
            "last_mean_gain": 0.15, "suites": ["acc", "ppl"]}
    text = _best(FederateResult("exp", "fed/exp", 1, (), (), best))
    assert "round 2, mean gain +25.00% over the base; the last round (3): +15.00%" in text
    assert f"git worktree add ../round-2 {'ab' * 6} && modelgit contribute " \
           "../round-2/federated/exp/adapter" in text
    last = _best(FederateResult("exp", "fed/exp", 1, (), (), {**best, "round": 3}))
    assert last.endswith("(the last round)") and "worktree" not in last
    assert _best(FederateResult("exp", "fed/exp", 1, (), ())) == ""


@pytest.mark.parametrize("method", ["fedavg", "fisher", "fedavg_full", "median", "trimmed_mean",
                                    "ties", "task_arithmetic", "dare_ties"])
def test_the_aggregate_does_not_depend_on_the_order_of_the_replies(method):
    """Replies come in the order of the clients' anonymous ids, which change every run (the
    run's salt): bit for bit the same aggregate in every order. Failed before for every method
    but the coordinate-wise ones (float sums in another order; DARE's masks to other clients)."""
    import itertools

    def lora(seed):
        g = torch.Generator().manual_seed(seed)
        return {"m.q": {"A": torch.randn(4, 64, generator=g) * 10 ** (seed % 3),
                        "B": torch.randn(48, 4, generator=g)}}

    ups = [ClientUpdate(f"c{i}", 7 + 13 * i, lora(i + 1),
                        {"m.q": {k: t.abs() + 0.1 for k, t in lora(10 + i)["m.q"].items()}})
           for i in range(4)]
    outs = [aggregate(method, lora(0), list(order), rank=4, alpha=8.0, trim=0.25, seed=3)
            for order in itertools.permutations(ups)]
    for out in outs[1:]:
        assert all(torch.equal(out["m.q"][k], outs[0]["m.q"][k]) for k in "AB")
