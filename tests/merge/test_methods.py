"""Method-specific checks, worked by hand on tiny tensors (the generic ones are in test_contract)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from modelgit.errors import UsageError
from modelgit.merge.base import METHODS, MergeInputs
from modelgit.merge.fisher import estimate_fisher, load_fisher, save_fisher
from modelgit.merge.methods._common import generator_for
from modelgit.merge.methods._sparsify import sparsify
from modelgit.merge.methods.task_arithmetic import Family, generalized_task_arithmetic


def run(name, base, models, params=None, **options):
    t = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    inputs = MergeInputs(None if base is None else t(base), [t(m) for m in models],
                         params or [{} for _ in models], options, "w")
    return METHODS[name].fn(inputs)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=1e-5)


# -- TIES and the task-arithmetic family ------------------------------------------------------------

def test_ties_elects_the_sign_of_the_sum_and_averages_agreeing_entries():
    models = [[1.0, -2.0, 3.0], [-2.0, 1.0, 1.0], [-0.5, -0.5, 1.0]]  # base 0: these are the deltas
    # sums -1.5, -1.5, 5 -> signs -, -, +; agreeing: {-2,-.5}, {-2,-.5}, {3,1,1}
    close(run("ties", [0.0] * 3, models), [-1.25, -1.25, 5 / 3])


def test_ties_count_consensus_differs_from_sum():
    models = [[1.0], [1.0], [-5.0]]
    inputs = MergeInputs(torch.zeros(1), [torch.tensor(m) for m in models], [{}] * 3, {}, "w")
    by_count = generalized_task_arithmetic(inputs, Family("c", "none", "count", True, False, ""))
    close(by_count, [1.0])  # two of three say +
    close(METHODS["ties"].fn(inputs), [-5.0])  # the sum says -


def test_ties_normalises_by_the_weights_of_agreeing_entries():
    # weighted deltas: [2*1, 1*(-1), 3*2] = [2, -1, 6] -> sign +, agreeing weights 2 + 3
    params = [{"weight": 2.0}, {"weight": 1.0}, {"weight": 3.0}]
    close(run("ties", [10.0], [[11.0], [9.0], [12.0]], params), [10.0 + 8 / 5])
    close(run("ties", [10.0], [[11.0], [9.0], [12.0]], params, normalize=False, **{"lambda": 0.5}), [14.0])


def test_ties_trims_to_the_largest_entries():
    delta = torch.tensor([0.1, -3.0, 0.5, 2.0])
    out = sparsify(delta, "magnitude", density=0.5, rescale=False)
    close(out, [0.0, -3.0, 0.0, 2.0])
    close(sparsify(delta, "magnitude", density=0.5, rescale=True), [0.0, -3.0 * 5.6 / 5, 0.0, 2.0 * 5.6 / 5])


def test_task_arithmetic_and_normalize_divisor():
    params = [{"weight": 0.5}, {"weight": 1.5}]
    close(run("task_arithmetic", [1.0, 1.0], [[3.0, 1.0], [1.0, 5.0]], params), [2.0, 7.0])
    close(run("task_arithmetic", [1.0, 1.0], [[3.0, 1.0], [1.0, 5.0]], params, normalize=True), [1.5, 4.0])


def test_breadcrumbs_drops_the_top_gamma_and_keeps_the_next_density():
    values = torch.randperm(100, generator=torch.Generator().manual_seed(0)).float() + 1  # 1..100 shuffled
    out = sparsify(values, "magnitude_outliers", density=0.5, gamma=0.1, rescale=False)
    assert sorted(out[out != 0].tolist()) == [float(v) for v in range(41, 91)]
    # density + gamma > 1: fewer outliers dropped, the density is kept
    out = sparsify(values, "magnitude_outliers", density=0.95, gamma=0.1, rescale=False)
    assert sorted(out[out != 0].tolist()) == [float(v) for v in range(1, 96)]


def test_dare_keeps_about_density_and_rescales():
    base, model = torch.zeros(100, 100), torch.full((100, 100), 0.6)
    inputs = MergeInputs(base, [model], [{"density": 0.3}], {}, "layers.3.mlp")
    out = METHODS["dare_linear"].fn(inputs)
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(0.3, abs=0.02)
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 2.0))  # 0.6 / 0.3
    no_rescale = METHODS["dare_linear"].fn(MergeInputs(base, [model], [{"density": 0.3}], {"rescale": False}, "x"))
    close(no_rescale.unique(), [0.0, 0.6])


def test_random_masks_depend_on_seed_and_tensor_name_only():
    base, model = torch.zeros(64), torch.ones(64)

    def mask(seed, name):
        return METHODS["dare_ties"].fn(MergeInputs(base, [model], [{"density": 0.5}], {"seed": seed}, name)) != 0

    assert torch.equal(mask(0, "a"), mask(0, "a"))
    assert not torch.equal(mask(0, "a"), mask(0, "b"))
    assert not torch.equal(mask(0, "a"), mask(1, "a"))
    # the seed derivation is part of the recipe format: a change would change every DARE/DELLA merge
    assert generator_for(0, "layers.0.weight").initial_seed() == 4821764017906524629


def test_della_prefers_large_entries_and_checks_epsilon():
    delta = torch.arange(1.0, 1001.0).reshape(1, 1000)
    out = sparsify(delta, "della", density=0.5, epsilon=0.3, rescale=False, generator=torch.Generator().manual_seed(0))
    kept = (out != 0).reshape(-1).float()
    assert kept[:200].mean() < 0.35 < 0.65 < kept[-200:].mean()  # p goes from 0.2 to 0.8
    with pytest.raises(UsageError, match="epsilon"):
        sparsify(delta, "della", density=0.9, epsilon=0.15, rescale=False, generator=torch.Generator())


# -- SLERP, linear, model stock, passthrough ------------------------------------------------------------

def test_slerp_endpoints_midpoint_and_colinear_fallback():
    a, b = [1.0, 0.0], [0.0, 1.0]
    close(run("slerp", a, [b], t=0.0), a)
    close(run("slerp", a, [b], t=1.0), b)
    close(run("slerp", None, [a, b], t=0.5), [math.sqrt(0.5), math.sqrt(0.5)])  # on the arc, not the chord
    close(run("slerp", [1.0, 2.0], [[2.0, 4.0]], t=0.25), [1.25, 2.5])  # colinear: linear interpolation
    with pytest.raises(UsageError, match="t must be in"):
        run("slerp", a, [b], t=1.5)
    with pytest.raises(UsageError, match="exactly 1"):
        run("slerp", a, [b, b])


def test_linear():
    close(run("linear", None, [[1.0], [4.0]], [{"weight": 2.0}, {"weight": 1.0}]), [2.0])
    close(run("linear", None, [[1.0], [4.0]], [{"weight": 2.0}, {"weight": 1.0}], normalize=False), [6.0])
    with pytest.raises(UsageError, match="sum to 0"):
        run("linear", None, [[1.0], [4.0]], [{"weight": 1.0}, {"weight": -1.0}])


def test_model_stock_by_hand():
    c = 1 / math.sqrt(2)  # cos between offsets [1, 0] and [1, 1]
    t = 2 * c / (1 + c)
    close(run("model_stock", [0.0, 0.0], [[1.0, 0.0], [1.0, 1.0]]), [t, t * 0.5])
    close(run("model_stock", [0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]]), [0.0, 0.0])  # orthogonal: t = 0
    close(run("model_stock", [5.0, 5.0], [[6.0, 5.0], [4.0, 5.0]]), [5.0, 5.0])  # cos = -1: singular, base
    # filter-wise: one t per row
    rows = run("model_stock", [[0.0, 0.0], [0.0, 0.0]], [[[1.0, 0.0], [1.0, 0.0]], [[1.0, 1.0], [0.0, 1.0]]],
               filter_wise=True)
    close(rows, [[t, t * 0.5], [0.0, 0.0]])
    with pytest.raises(UsageError, match="at least 2"):
        run("model_stock", [0.0], [[1.0]])


def test_passthrough():
    close(run("passthrough", None, [[1.0, -2.0]]), [1.0, -2.0])
    close(run("passthrough", None, [[1.0, -2.0]], [{"scale": 0.5}]), [0.5, -1.0])
    ints = METHODS["passthrough"].fn(MergeInputs(None, [torch.arange(3)], [{}], {}, "ids"))
    assert ints.dtype == torch.int64
    with pytest.raises(UsageError, match="exactly 1"):
        run("passthrough", None, [[1.0], [2.0]])


# -- Fisher ---------------------------------------------------------------------------------------------

def test_fisher_one_hot_picks_the_model_and_zero_falls_back_to_average():
    models = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])]
    one_hot = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0])]
    out = METHODS["fisher"].fn(MergeInputs(None, models, [{}, {}], {"fisher": one_hot}, "w"))
    close(out, [1.0, 20.0, 3.0], atol=1e-5)
    zeros = [torch.zeros(3), torch.zeros(3)]
    params = [{"weight": 3.0}, {"weight": 1.0}]
    out = METHODS["fisher"].fn(MergeInputs(None, models, params, {"fisher": zeros}, "w"))
    close(out, [3.25, 6.5, 9.75])
    out = METHODS["fisher"].fn(MergeInputs(None, models, [{}, {}], {"fisher": [torch.full((3,), 3.0),
                                                                              torch.ones(3)]}, "w"))
    close(out, [3.25, 6.5, 9.75])
    with pytest.raises(UsageError, match="options\\['fisher'\\]"):
        METHODS["fisher"].fn(MergeInputs(None, models, [{}, {}], {}, "w"))
    with pytest.raises(UsageError, match="1 Fisher"):
        METHODS["fisher"].fn(MergeInputs(None, models, [{}, {}], {"fisher": zeros[:1]}, "w"))


def _tiny_linear():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
        model.bias.fill_(0.5)
    return model


BATCHES = [{"x": torch.tensor([[1.0, 2.0], [0.0, 1.0]]), "y": torch.tensor([[0.0], [1.0]])},
           {"x": torch.tensor([[2.0, 0.0]]), "y": torch.tensor([[3.0]])}]


def mse(model, example):
    return nn.functional.mse_loss(model(example["x"]), example["y"])


def test_estimate_fisher_is_the_mean_of_per_example_squared_gradients(tmp_path):
    # residuals r = w.x + b - y: -0.5, -1.5, -0.5; grads 2r*x and 2r:
    # w: [-1,-2], [0,-3], [-2,0] -> squares mean [5/3, 13/3]; b: -1, -3, -1 -> 11/3
    model = _tiny_linear().train()
    fisher = estimate_fisher(model, BATCHES, loss_fn=mse)
    close(fisher["weight"], [[5 / 3, 13 / 3]])
    close(fisher["bias"], [11 / 3])
    assert fisher["weight"].dtype == torch.float32
    assert model.training and model.weight.grad is None  # mode given back, .grad untouched
    close(estimate_fisher(model, BATCHES, max_batches=1, loss_fn=mse)["weight"], [[0.5, 6.5]])
    save_fisher(fisher, tmp_path / "f.safetensors")
    loaded = load_fisher(tmp_path / "f.safetensors")
    assert loaded.keys() == fisher.keys() and all(torch.equal(loaded[k], fisher[k]) for k in fisher)


def test_estimate_fisher_uses_output_loss_and_skips_frozen_parameters():
    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _tiny_linear()
            self.inner.bias.requires_grad_(False)

        def forward(self, x, y):
            return SimpleNamespace(loss=mse(self.inner, {"x": x, "y": y}))

    fisher = estimate_fisher(WithLoss(), BATCHES)
    assert sorted(fisher) == ["inner.weight"]
    close(fisher["inner.weight"], [[5 / 3, 13 / 3]])
    with pytest.raises(UsageError, match="loss_fn"):
        estimate_fisher(_tiny_linear(), [{"input": torch.ones(1, 2)}])
    with pytest.raises(UsageError, match="no examples"):
        estimate_fisher(_tiny_linear(), [], loss_fn=mse)



def test_magnitude_selection_matches_torch_argsort_with_ties():
    """Tied magnitudes are common in float32; mergekit keeps those torch.argsort puts first."""
    from modelgit.merge.methods._sparsify import sparsify

    torch.manual_seed(0)
    delta = torch.randint(-4, 5, (5000,)).float() / 8  # few distinct magnitudes: ties everywhere
    for density in (0.1, 0.35, 0.9):
        k = int(density * delta.numel())
        expected = torch.zeros_like(delta)
        order = torch.argsort(delta.abs(), descending=True)[:k]
        expected[order] = delta[order]
        got = sparsify(delta, "magnitude", density=density, rescale=False, gamma=0.0, epsilon=0.0,
                       generator=None)
        assert torch.equal(got, expected), density


# -- the two-pass family against the whole-tensor algorithm -----------------------------------------

def _whole_sparsify(delta, method, density, rescale, gamma, epsilon, generator):
    """The former whole-tensor sparsification (one float mask of the task vector's size)."""
    def rescaled(mask):
        masked = delta * mask
        if not rescale:
            return masked
        before, after = delta.abs().sum(), masked.abs().sum()
        return masked if before < 1e-7 or after < 1e-7 else masked * (before / after)

    n = delta.numel()
    if method == "none" or density >= 1:
        return delta
    if method in ("magnitude", "random", "della") and (density <= 0 or n == 0):
        return torch.zeros_like(delta)
    mask = torch.zeros(n, dtype=delta.dtype)
    if method == "magnitude":
        mask[torch.argsort(delta.abs().reshape(-1), descending=True)[:max(1, int(density * n))]] = 1
        return rescaled(mask.reshape(delta.shape))
    if method == "magnitude_outliers":
        keep, top = int(density * n), int(gamma * n)
        bottom = max(0, n - keep - top)
        mask[torch.sort(delta.abs().reshape(-1)).indices[bottom:bottom + keep]] = 1
        return rescaled(mask.reshape(delta.shape))
    if method == "random":
        kept = delta * torch.bernoulli(torch.full_like(delta, density), generator=generator)
        return kept / density if rescale else kept
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(delta.dtype)
    norm = ranks / float(rows.shape[1] - 1) if rows.shape[1] > 1 else torch.full_like(ranks, 0.5)
    probs = (density - epsilon) + norm * (2 * epsilon)
    return rescaled(torch.bernoulli(probs, generator=generator).reshape(delta.shape))


def _whole_task_arithmetic(inputs, family):
    """The former whole-tensor generalized task arithmetic: every task vector held at once."""
    dtype = torch.float64 if inputs.base.dtype == torch.float64 else torch.float32
    b = inputs.base.to(dtype)
    opts = {**family.options(), **inputs.options}
    defaults = family.model_params()
    get = lambda i, key: float(inputs.params[i].get(key, defaults.get(key, 0.0)))  # noqa: E731
    generator = generator_for(int(opts["seed"]), inputs.name) if family.random else None
    weights = [get(i, "weight") for i in range(len(inputs.models))]
    deltas = [_whole_sparsify(m.to(dtype) - b, family.sparsification, get(i, "density"), bool(opts["rescale"]),
                              get(i, "gamma"), get(i, "epsilon"), generator).mul_(weights[i])
              for i, m in enumerate(inputs.models)]
    merged = torch.zeros_like(b)
    if family.consensus == "none":
        for delta in deltas:
            merged.add_(delta)
        total = float(sum(torch.tensor(weights, dtype=dtype)))
        divisor = 1.0 if abs(total) < 1e-8 else total
    else:
        votes = torch.zeros_like(b)
        for delta in deltas:
            votes.add_(delta if family.consensus == "sum" else delta.sign())
        elected = torch.where(votes >= 0, 1.0, -1.0).to(dtype)
        divisor = torch.zeros_like(b)
        for delta, weight in zip(deltas, weights):
            agree = delta.sign() == elected
            merged.add_(torch.where(agree, delta, 0.0))
            divisor.add_(agree.to(dtype), alpha=weight)
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    if opts["normalize"]:
        merged = merged / divisor
    return b + merged * float(opts["lambda"]) if float(opts["lambda"]) != 1.0 else b + merged


FAMILY_SETTINGS = [("ties", "magnitude", "sum"), ("dare_ties", "random", "sum"),
                   ("breadcrumbs_ties", "magnitude_outliers", "sum"), ("della", "della", "sum"),
                   ("della_linear", "della", "none"), ("breadcrumbs", "magnitude_outliers", "none"),
                   ("count", "magnitude", "count"), ("task_arithmetic", "none", "none")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("quantized", [False, True], ids=["continuous", "ties-everywhere"])
@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("setting", FAMILY_SETTINGS, ids=lambda s: s[0])
def test_family_gives_the_bits_of_the_whole_tensor_algorithm(setting, rescale, quantized, dtype, monkeypatch):
    from modelgit.merge.methods import _common

    monkeypatch.setattr(_common, "BLOCK", 1000)  # several blocks, none aligned to a row
    name, sparsification, consensus = setting
    family = Family(name, sparsification, consensus, True, rescale, "")
    g = torch.Generator().manual_seed(len(name))
    base = torch.randn(61, 47, generator=g)
    models = [base + 0.05 * torch.randn(61, 47, generator=g) for _ in range(3)]
    if quantized:  # few distinct magnitudes: the top-k threshold splits large groups of ties
        base, models = (base * 16).round() / 16, [(m * 16).round() / 16 for m in models]
    base = base.to(dtype)
    models = [models[0].to(dtype), base, models[1].to(dtype)]  # the second model is the base itself
    params = [{"weight": 0.6, "density": 0.4, "gamma": 0.05, "epsilon": 0.1},
              {"weight": -0.3, "density": 0.7, "gamma": 0.1, "epsilon": 0.2},
              {"weight": 0.2, "density": 0.5}]
    inputs = MergeInputs(base, models, params, {"lambda": 0.9, "seed": 3}, "layers.0.w")
    got = generalized_task_arithmetic(inputs, family)
    expected = _whole_task_arithmetic(inputs, family)
    assert got.dtype == expected.dtype
    assert torch.equal(got.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 1000, 1003])
def test_packed_masks_unpack_any_range(count):
    from modelgit.merge.methods._sparsify import _bits_at, _pack, _unpack

    mask = torch.rand(count, generator=torch.Generator().manual_seed(count)) < 0.3
    bits = _pack(mask)
    assert bits.numel() == -(-count // 8)
    positions = mask.nonzero().reshape(-1)
    assert torch.equal(_bits_at(positions[torch.randperm(positions.numel())], count), bits)
    for start, stop in [(0, count), (0, count // 2), (count // 3, count), (count // 2, count // 2 + 5)]:
        stop = min(stop, count)
        assert torch.equal(_unpack(bits, start, stop).bool(), mask[start:stop])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_task_arithmetic_masks_give_the_values_of_torch_where(dtype):
    """The consensus step avoids torch's slow bool kernels; its values must be where()'s, bit for
    bit, signed zeros, infinities and NaN included."""
    from modelgit.merge.methods import task_arithmetic as ta

    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, -3.5, 2.0], dtype=dtype)
    values = torch.cat([special, torch.randn(1000, dtype=dtype, generator=torch.Generator().manual_seed(1))])
    mask = torch.rand(values.shape, generator=torch.Generator().manual_seed(2)) > 0.5
    mask[: special.numel()] = torch.tensor([True, True, True, False, True, True, False, True])

    def bits(t):
        return t.view(torch.int32 if dtype == torch.float32 else torch.int64)

    assert torch.equal(bits(ta._kept_or_zero(values, mask)), bits(torch.where(mask, values, 0.0).to(dtype)))
    assert torch.equal(bits(ta._kept_or_zero(values, ~mask)), bits(torch.where(~mask, values, 0.0).to(dtype)))
    deltas = [values, values.flip(0) * 0.5, torch.zeros_like(values)]
    for consensus in ("sum", "count"):
        votes = torch.zeros_like(values)
        for d in deltas:
            votes.add_(d if consensus == "sum" else d.sign())
        expected = torch.where(votes >= 0, 1.0, -1.0).to(dtype)
        assert torch.equal(bits(ta._elected_sign(deltas, consensus, values)), bits(expected))
    divisor = torch.tensor([0.0, -0.0, 0.5, float("nan"), float("inf"), 3.0], dtype=dtype)
    fixed = divisor.clone().add_(ta._as_number(divisor == 0, dtype))
    assert torch.equal(bits(fixed), bits(torch.where(divisor == 0, torch.ones_like(divisor), divisor)))
