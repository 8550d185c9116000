"""Regenerate ``reference_values.json``: expected outputs of the merge methods from mergekit and PEFT.

Not a test (no ``test_`` prefix). Run it with a Python that has mergekit and peft, e.g.::

    python3 -m venv --system-site-packages /tmp/refvenv
    /tmp/refvenv/bin/pip install 'torch==2.13.0' mergekit peft
    /tmp/refvenv/bin/python tests/merge/make_reference_values.py

Inputs are not stored: :func:`make_inputs` rebuilds them from a seed and a shape (torch's CPU
generator, stable for the pinned torch). ``test_reference.py`` imports this file for that function
and the case table only; mergekit and peft are imported inside :func:`main`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

OUT = Path(__file__).with_name("reference_values.json")
W3 = [0.7, 0.5, 0.3]


def make_inputs(seed: int, shape: list[int], n_models: int, kind: str = "related"):
    """Base and models, float32. ``related``: models share a direction from the base (positive
    cosines); ``colinear``: one model = 2 * base + 1e-5 noise; ``opposite``: one model = -base."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)  # (*shape)
    if kind == "colinear":
        return base, [2 * base + 1e-5 * torch.randn(shape, generator=g)]
    if kind == "opposite":
        return base, [-base]
    common = torch.randn(shape, generator=g)  # (*shape) shared direction
    return base, [base + 0.3 * common + 0.2 * torch.randn(shape, generator=g) for _ in range(n_models)]


def _c(cid, tool, method, seed, shape, n, params=None, options=None, kind="related", ref=None, family=None):
    return {"id": cid, "tool": tool, "method": method, "seed": seed, "shape": shape, "n_models": n,
            "kind": kind, "params": params or {}, "options": options or {}, "ref": ref or {},
            "family": family}


# params: per-model lists; options: shared. The same values go to mergekit (or PEFT) and to ours.
CASES = [
    _c("linear_norm", "mergekit", "linear", 1, [4, 6], 3, {"weight": [1.0, 0.5, 0.25]}),
    _c("linear_raw", "mergekit", "linear", 2, [7], 3, {"weight": W3}, {"normalize": False}),
    _c("slerp_03", "mergekit", "slerp", 3, [4, 6], 1, options={"t": 0.3}),
    _c("slerp_08_3d", "mergekit", "slerp", 4, [2, 3, 4], 1, options={"t": 0.8}),
    _c("slerp_colinear", "mergekit", "slerp", 5, [4, 6], 1, options={"t": 0.4}, kind="colinear"),
    _c("slerp_opposite", "mergekit", "slerp", 6, [5], 1, options={"t": 0.25}, kind="opposite"),
    _c("task_arithmetic", "mergekit", "task_arithmetic", 7, [4, 6], 3, {"weight": W3}),
    _c("task_arithmetic_lam_norm", "mergekit", "task_arithmetic", 8, [4, 6], 3, {"weight": W3},
       {"lambda": 0.8, "normalize": True}),
    _c("ties", "mergekit", "ties", 9, [4, 6], 3, {"weight": W3, "density": [0.5, 0.4, 0.7]}),
    _c("ties_1d_raw_lam", "mergekit", "ties", 10, [9], 3, {"weight": [1.0, -0.5, 0.8], "density": 0.5},
       {"normalize": False, "lambda": 1.5}),
    _c("ties_rescale", "mergekit", "ties", 11, [4, 6], 2, {"weight": [0.6, 0.9], "density": 0.3},
       {"rescale": True}),
    _c("breadcrumbs", "mergekit", "breadcrumbs", 12, [5, 8], 3, {"weight": W3, "density": 0.6, "gamma": 0.1}),
    _c("breadcrumbs_ties", "mergekit", "breadcrumbs_ties", 13, [5, 8], 3,
       {"weight": W3, "density": [0.5, 0.6, 0.7], "gamma": 0.05}, {"normalize": True}),
    _c("breadcrumbs_default_gamma", "mergekit", "breadcrumbs", 14, [10, 20], 2, {"weight": [1.0, 1.0],
       "density": 0.9}),
    _c("dare_linear_dense", "mergekit", "dare_linear", 15, [4, 6], 3, {"weight": W3}),
    _c("dare_ties_dense", "mergekit", "dare_ties", 16, [4, 6], 3, {"weight": W3}),
    _c("della_dense", "mergekit", "della", 17, [4, 6], 3, {"weight": W3}),
    _c("della_linear_dense", "mergekit", "della_linear", 18, [4, 6], 3, {"weight": W3}),
    _c("model_stock", "mergekit", "model_stock", 19, [4, 6], 3),
    _c("model_stock_filter", "mergekit", "model_stock", 20, [4, 6], 2, options={"filter_wise": True}),
    _c("model_stock_1d_filter", "mergekit", "model_stock", 21, [6], 4, options={"filter_wise": True}),
    _c("peft_task_arithmetic", "peft", "task_arithmetic", 22, [4, 6], 3, {"weight": W3},
       ref={"fn": "task_arithmetic"}),
    _c("peft_ties_total", "peft", "ties", 23, [4, 6], 3, {"density": 0.5}, ref={"fn": "ties", "sign": "total"}),
    _c("peft_ties_frequency", "peft", None, 24, [4, 6], 3, {"density": 0.5},
       ref={"fn": "ties", "sign": "frequency"}, family=["magnitude", "count", True, False]),
    _c("peft_magnitude_prune", "peft", None, 25, [4, 6], 3, {"weight": W3, "density": 0.4},
       ref={"fn": "magnitude_prune"}, family=["magnitude", "none", False, False]),
]

# properties of random sparsification: (method, shape, density, epsilon); compared as statistics
RANDOM_CASES = [("dare", [200, 200], 0.3, None), ("della", [200, 200], 0.4, 0.15)]


def _mergekit(case, base, models):
    from mergekit.merge_methods.api import merge_tensors

    n = len(models)
    params = {k: (v if isinstance(v, list) else [v] * n) for k, v in case["params"].items()}
    if case["method"] in ("task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties", "dare_linear",
                          "dare_ties", "della", "della_linear") and "weight" not in params:
        params["weight"] = [1.0] * n
    if case["method"] == "linear":  # no base: every input is a model
        return merge_tensors(models, "linear", parameters={**params, **case["options"]})
    params = {k: {i + 1: x for i, x in enumerate(v)} for k, v in params.items()}  # keyed by input id
    return merge_tensors([base, *models], case["method"], parameters={**params, **case["options"]},
                         base_index=0)


def _peft(case, base, models):
    from peft.utils import merge_utils

    deltas = [m - base for m in models]
    weights = torch.tensor(case["params"].get("weight", [1.0] * len(models)))
    density = case["params"].get("density")
    fn = case["ref"]["fn"]
    if fn == "task_arithmetic":
        return base + merge_utils.task_arithmetic(deltas, weights)
    if fn == "magnitude_prune":
        return base + merge_utils.magnitude_prune(deltas, weights, density)
    return base + merge_utils.ties(deltas, weights, density, majority_sign_method=case["ref"]["sign"])


def _random_stats(method, shape, density, epsilon):
    """Kept fraction, rescale factor and (DELLA) kept fractions of the smaller/larger half."""
    import mergekit.sparsify as ms
    from peft.utils import merge_utils

    torch.manual_seed(0)
    delta = torch.randn(shape)  # (*shape)
    out = {}
    if method == "dare":
        for tool, res in (("peft", merge_utils.random_pruning(delta, density, rescale=True)),
                          ("mergekit", ms.bernoulli(delta, density, ms.RescaleNorm.l1))):
            kept = res != 0
            out[tool] = {"kept": kept.float().mean().item(), "scale": (res[kept] / delta[kept]).mean().item()}
        return out
    res = ms.della_magprune(delta, density, epsilon, rescale_norm=None)
    kept = res != 0
    big = delta.abs() >= delta.abs().median(dim=1, keepdim=True).values
    return {"mergekit": {"kept": kept.float().mean().item(), "kept_large": kept[big].float().mean().item(),
                         "kept_small": kept[~big].float().mean().item()}}


def main() -> int:
    import peft
    from importlib.metadata import version
    from mergekit import merge_methods

    cases = []
    for case in CASES:
        base, models = make_inputs(case["seed"], case["shape"], case["n_models"], case["kind"])
        with torch.no_grad():
            out = (_mergekit if case["tool"] == "mergekit" else _peft)(case, base, models)
        cases.append({**case, "expected": [float(x) for x in out.reshape(-1).tolist()]})
    defaults = {}
    for name in ("linear", "slerp", "model_stock", "task_arithmetic", "ties", "dare_linear", "dare_ties",
                 "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"):
        spec = merge_methods.get(name).spec
        defaults[name] = {p.name: p.default for p in spec.parameters if not p.required and p.name != "int8_mask"}
    random = [{"method": m, "shape": s, "density": d, "epsilon": e, "stats": _random_stats(m, s, d, e)}
              for m, s, d, e in RANDOM_CASES]
    doc = {"produced_by": {"mergekit": version("mergekit"), "peft": peft.__version__, "torch": torch.__version__,
                           "script": "tests/merge/make_reference_values.py"},
           "defaults": defaults, "cases": cases, "random": random}
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
