"""Agreement with reference implementations, through numbers pinned in ``reference_values.json``.

The expected outputs were computed by mergekit and PEFT (versions in the file's ``produced_by``)
with ``make_reference_values.py``, which also rebuilds the inputs from seed and shape; neither tool
is needed to run these tests. Deterministic methods are compared value by value; DARE and DELLA
(whose random generators differ from ours) by the statistics of their masks.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from modelgit.merge.base import METHODS, MergeInputs
from modelgit.merge.methods._sparsify import sparsify
from modelgit.merge.methods.task_arithmetic import Family, generalized_task_arithmetic

HERE = Path(__file__).parent
REFERENCE = json.loads((HERE / "reference_values.json").read_text())
_spec = importlib.util.spec_from_file_location("make_reference_values", HERE / "make_reference_values.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)
ATOL = 1e-6  # float32 arithmetic in a different order (slerp differs by ~2e-7)


def _run(case: dict) -> torch.Tensor:
    base, models = make.make_inputs(case["seed"], case["shape"], case["n_models"], case["kind"])
    n = len(models)
    params = [{k: (v[i] if isinstance(v, list) else v) for k, v in case["params"].items()} for i in range(n)]
    inputs = MergeInputs(None if case["method"] == "linear" else base, models, params, case["options"], case["id"])
    if case["family"]:
        sparsification, consensus, normalize, rescale = case["family"]
        return generalized_task_arithmetic(inputs, Family("custom", sparsification, consensus, normalize,
                                                          rescale, ""))
    return METHODS[case["method"]].fn(inputs)


def test_reference_file_matches_the_case_table():
    assert [c["id"] for c in REFERENCE["cases"]] == [c["id"] for c in make.CASES]
    assert REFERENCE["produced_by"]["mergekit"] == "0.1.5"


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"{c['tool']}-{c['id']}")
def test_matches_reference(case):
    expected = torch.tensor(case["expected"], dtype=torch.float32).reshape(case["shape"])
    torch.testing.assert_close(_run(case), expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(REFERENCE["defaults"]))
def test_defaults_match_mergekit(name):
    method = METHODS[name]
    ours = {**method.model_params, **method.options}
    for key, value in REFERENCE["defaults"][name].items():
        assert ours[key] == value, f"{name}.{key}: ours {ours.get(key)!r}, mergekit {value!r}"


def _random_case(method: str) -> dict:
    return next(r for r in REFERENCE["random"] if r["method"] == method)


def test_dare_sparsification_statistics():
    ref = _random_case("dare")
    density = ref["density"]
    delta = torch.randn(ref["shape"], generator=torch.Generator().manual_seed(0))  # (200, 200)
    out = sparsify(delta, "random", density=density, rescale=True, generator=torch.Generator().manual_seed(1))
    kept = out != 0
    scale = (out[kept] / delta[kept]).mean().item()
    for tool in ("peft", "mergekit"):
        assert kept.float().mean().item() == pytest.approx(ref["stats"][tool]["kept"], abs=0.01), tool
    # PEFT (and the DARE paper) rescale by 1/density exactly, as we do; mergekit 0.1.5 matches the L1
    # norm instead, which is 1/density up to sampling noise
    assert scale == pytest.approx(ref["stats"]["peft"]["scale"], rel=1e-5)
    assert scale == pytest.approx(ref["stats"]["mergekit"]["scale"], rel=0.02)


def test_della_sparsification_statistics():
    ref = _random_case("della")
    stats = ref["stats"]["mergekit"]
    delta = torch.randn(ref["shape"], generator=torch.Generator().manual_seed(0))  # (200, 200)
    out = sparsify(delta, "della", density=ref["density"], epsilon=ref["epsilon"], rescale=False,
                   generator=torch.Generator().manual_seed(1))
    kept = out != 0
    big = delta.abs() >= delta.abs().median(dim=1, keepdim=True).values  # (200, 200) larger half of each row
    assert kept.float().mean().item() == pytest.approx(stats["kept"], abs=0.015)
    assert kept[big].float().mean().item() == pytest.approx(stats["kept_large"], abs=0.015)
    assert kept[~big].float().mean().item() == pytest.approx(stats["kept_small"], abs=0.015)
