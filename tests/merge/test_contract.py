"""The contract every merge method keeps, run over the whole registry.

Each registered method needs a row in ``CASES`` (a test fails for a method without one). Checks:

* identity — merging one model at weight 1 returns it. With a base: ``base + (model - base)``.
  Density-based methods are checked at their default density 1.0 (mergekit's default), where
  nothing is dropped; with random sparsification at density < 1 (DARE, DELLA) a single model is
  *not* returned (entries are dropped and rescaled), so that setting is exempt. ``slerp`` uses
  ``t = 1``. ``model_stock`` needs two models: it is given two copies of the model (cos = 1, so
  t = 1 and the result is their mean, the model).
* permutation — reordering the models (with their params and per-model options) does not change
  the result. Exempt: ``slerp`` (the endpoints are ordered), ``passthrough`` (one model),
  and DARE/DELLA at density < 1 (one generator draws the models' masks in order).
* dtype and shape are kept (float32 in, float32 out; float64 in, float64 out), no NaN or inf on
  random inputs, the inputs are not modified, and two calls give equal results.
* streaming — a method with a ``stream`` form gives the bits of ``fn`` whatever the block size
  (blocks of 7 elements, which split every row and every SIMD vector, against whole tensors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

from modelgit.errors import UsageError
from modelgit.merge.base import METHODS, MergeInputs, register
import modelgit.merge.methods  # noqa: F401  (registers every method)
from modelgit.merge.methods import _common


def _fishers(shape, n, g):
    return {"fisher": [torch.rand(shape, generator=g) for _ in range(n)]}


@dataclass(frozen=True)
class Case:
    n_models: int  # models in the generic checks
    base: bool  # give a base tensor
    params: dict = field(default_factory=dict)  # per-model params (same for every model)
    options: dict = field(default_factory=dict)  # typical options for the generic checks
    make_options: Callable | None = None  # (shape, n_models, generator) -> per-model options
    identity_options: dict = field(default_factory=dict)
    identity_copies: int = 1  # copies of the model in the identity check
    permutation: bool = True


SPARSE = {"density": 0.5}
CASES: dict[str, Case] = {
    "linear": Case(3, False),
    "slerp": Case(1, True, options={"t": 0.3}, identity_options={"t": 1.0}, permutation=False),
    "passthrough": Case(1, False, permutation=False),
    "task_arithmetic": Case(3, True, options={"lambda": 0.9}),
    "ties": Case(3, True, SPARSE),
    "dare_linear": Case(3, True, SPARSE, permutation=False),
    "dare_ties": Case(3, True, SPARSE, permutation=False),
    "breadcrumbs": Case(3, True, {"density": 0.6, "gamma": 0.1}),
    "breadcrumbs_ties": Case(3, True, {"density": 0.6, "gamma": 0.1}),
    "della": Case(3, True, SPARSE, permutation=False),
    "della_linear": Case(3, True, SPARSE, permutation=False),
    "model_stock": Case(3, True, identity_copies=2),
    "fisher": Case(3, False, make_options=_fishers),
}
WEIGHTS = [0.7, 0.5, 0.3]
NAMES = sorted(METHODS)


def _case(name: str) -> Case:
    if name not in CASES:
        pytest.fail(f"merge method {name!r} has no row in test_contract.CASES; add one")
    return CASES[name]


def _inputs(name: str, shape=(3, 5), dtype=torch.float32, seed=0) -> MergeInputs:
    case = _case(name)
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(dtype) if case.base else None
    models = [torch.randn(shape, generator=g).to(dtype) for _ in range(case.n_models)]
    params = [{**case.params, **({"weight": w} if "weight" in METHODS[name].model_params else {})}
              for w in WEIGHTS[:case.n_models]]
    options = dict(case.options)
    if case.make_options:
        options.update(case.make_options(shape, case.n_models, g))
    return MergeInputs(base, models, params, options, name="layers.0.weight")


def test_every_method_is_covered():
    missing = sorted(set(METHODS) - set(CASES))
    assert not missing, f"no contract case for {missing}: add them to CASES"
    assert not sorted(set(CASES) - set(METHODS)), "CASES lists methods that are not registered"


def test_registry_rejects_duplicates_and_documents_methods():
    with pytest.raises(ValueError, match="already registered"):
        register("linear", needs_base=False, paper="x")(lambda inputs: inputs.models[0])
    for method in METHODS.values():
        assert method.paper.startswith("https://"), method.name
        assert method.fn.__doc__, method.name
        assert all(isinstance(v, float) for v in method.model_params.values()), method.name


@pytest.mark.parametrize("name", NAMES)
def test_one_model_is_returned(name):
    case = _case(name)
    g = torch.Generator().manual_seed(1)
    model = torch.randn(4, 6, generator=g)
    base = torch.randn(4, 6, generator=g) if case.base else None
    models = [model] * case.identity_copies
    options = {**case.identity_options}
    if case.make_options:
        options.update(case.make_options((4, 6), len(models), g))
    inputs = MergeInputs(base, models, [{"weight": 1.0}] * len(models), options, "w")
    torch.testing.assert_close(METHODS[name].fn(inputs), model, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_model_order_does_not_matter(name):
    if not _case(name).permutation:
        pytest.skip(f"{name} is exempt from the permutation check (see the module docstring)")
    inputs = _inputs(name)
    order = [2, 0, 1]
    options = {k: ([v[i] for i in order] if k == "fisher" else v) for k, v in inputs.options.items()}
    permuted = MergeInputs(inputs.base, [inputs.models[i] for i in order], [inputs.params[i] for i in order],
                           options, inputs.name)
    fn = METHODS[name].fn
    torch.testing.assert_close(fn(permuted), fn(inputs), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 5), (7,), (2, 3, 4), ()])
@pytest.mark.parametrize("name", NAMES)
def test_dtype_shape_and_finite(name, shape, dtype):
    out = METHODS[name].fn(_inputs(name, shape, dtype))
    assert out.dtype == dtype
    assert tuple(out.shape) == shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_not_modified(name):
    inputs = _inputs(name)
    tensors = [t for t in [inputs.base, *inputs.models, *inputs.options.get("fisher", [])] if t is not None]
    before = [t.clone() for t in tensors]
    params_before = [dict(p) for p in inputs.params]
    out = METHODS[name].fn(inputs)
    out.add_(1.0)  # writing into the result must not reach an input either
    assert all(torch.equal(a, b) for a, b in zip(before, tensors))
    assert [dict(p) for p in inputs.params] == params_before


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name):
    inputs = _inputs(name, (16, 16))
    assert torch.equal(METHODS[name].fn(inputs), METHODS[name].fn(inputs))


@pytest.mark.parametrize("name", [n for n in NAMES if METHODS[n].needs_base])
def test_missing_base_is_a_usage_error(name):
    inputs = _inputs(name)
    with pytest.raises(UsageError, match="base"):
        METHODS[name].fn(MergeInputs(None, inputs.models, inputs.params, inputs.options, "w"))


STREAMED = sorted(n for n in NAMES if METHODS[n].stream is not None)


def test_the_large_methods_stream():
    # the engine's memory bound for these rests on their stream form (see engine.py)
    assert {"linear", "ties", "dare_ties", "breadcrumbs_ties", "della", "task_arithmetic"} <= set(STREAMED)


@pytest.mark.parametrize("shape", [(33, 29), (7,), (), (0, 3)])
@pytest.mark.parametrize("name", STREAMED)
def test_stream_gives_the_bits_of_fn_in_any_block_size(name, shape, monkeypatch):
    inputs = _inputs(name, shape)
    try:
        whole = METHODS[name].fn(inputs)
    except RuntimeError:
        assert shape == (0, 3)  # DELLA ranks rows: an empty tensor has none
        return
    monkeypatch.setattr(_common, "BLOCK", 7)
    # a piece is valid until the next is asked for (streams may reuse their buffers): copy each
    pieces = [piece.clone() for piece in METHODS[name].stream(_common.as_lazy(inputs))]
    assert all(p.dim() == 1 and p.numel() <= 7 for p in pieces)
    streamed = torch.cat(pieces)
    assert streamed.dtype == whole.dtype and streamed.numel() == whole.numel()
    assert torch.equal(streamed.view(torch.uint8), whole.reshape(-1).view(torch.uint8))  # same bits


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_parameter_is_accepted_by_a_recipe_at_its_level(name):
    """What a method registers is what a recipe may set: per-model parameters on a model,
    options at the top level; the inputs contract admits the method's own minimum."""
    from modelgit.merge.parameters import method_params
    from modelgit.merge.recipe import parse_recipe

    method = METHODS[name]
    specs = method_params(method)
    assert set(specs) >= set(method.model_params) | set(method.model_files)
    per_model = {k: ("f.safetensors" if s.kind == "path" else s.default) for k, s in specs.items()
                 if s.scope == "model"}
    top = {k: s.default for k, s in specs.items() if s.scope == "global"}
    # a base where the method takes one as its reference, and the fewest models it merges
    base = {} if method.base_is_input else {"base_model": "base"}
    count = max(1, method.inputs[0] - (1 if base else 0))
    models = [{"model": f"m{i}", "parameters": per_model} for i in range(count)]
    recipe = parse_recipe({"merge_method": name, **base, "models": models, "parameters": top})
    assert recipe.merge_method == name
    assert method.inputs[0] >= 1 and (method.inputs[1] is None or method.inputs[1] >= method.inputs[0])
