"""Generalized task arithmetic: task arithmetic, TIES, DARE, Model Breadcrumbs and DELLA.

One parameterised function, :func:`generalized_task_arithmetic`, as in mergekit's
``generalized_task_arithmetic.py``; each registered method is a setting of it:

| method             | sparsification     | consensus | normalize | rescale | paper |
|--------------------|--------------------|-----------|-----------|---------|-------|
| task_arithmetic    | none               | none      | False     | False   | 2212.04089 |
| ties               | magnitude          | sum       | True      | False   | 2306.01708 |
| dare_linear        | random             | none      | False     | True    | 2311.03099 |
| dare_ties          | random             | sum       | False     | True    | 2311.03099 |
| breadcrumbs        | magnitude_outliers | none      | False     | False   | 2312.06795 |
| breadcrumbs_ties   | magnitude_outliers | sum       | False     | False   | 2312.06795 |
| della              | della              | sum       | True      | True    | 2406.11617 |
| della_linear       | della              | none      | False     | True    | 2406.11617 |

Per tensor, with ``delta_i = sparsify(model_i - base) * weight_i``:

* no consensus: ``merged = sum_i delta_i``, divisor ``sum_i weight_i`` (1 when ``|.| < 1e-8``);
* consensus: the elected sign per entry is the sign of ``sum_i delta_i`` (``sum``) or of the sum of
  the signs (``count``), ties going to +; only entries of that sign count (zeros never do);
  ``merged = sum_i delta_i * mask_i`` and the divisor ``sum_i weight_i * mask_i`` (1 where 0);
* ``merged /= divisor`` if ``normalize``; the result is ``base + lambda * merged``.

Per-model params: ``weight`` (1.0), ``density`` (1.0: nothing dropped unless asked, as in
mergekit; taken and unused by task_arithmetic, as in mergekit), ``gamma`` (0.01, breadcrumbs),
``epsilon`` (0.15, DELLA). Options: ``normalize``, ``rescale``, ``lambda`` (1.0), ``int8_mask``
(mergekit's memory option, no effect on the result), and ``seed`` (0) for the random ones: the
masks come from a generator seeded by ``(seed, tensor name)``, so a recipe is reproducible and
each tensor gets its own masks.

**Memory.** The merge streams in two passes. First, one model at a time, the whole task vector
is built and sparsified into a mask (the only step that needs a whole tensor: the top-k set
torch's sort would give, or the generator's draws); only the mask, bit-packed, is kept. Then
every entry's result depends on that entry alone, so the base and the models are re-read in
blocks and weighted, voted on, averaged and yielded block by block. The peak is the first
pass's selection (see _sortselect): the task vector (worked on in place), an int32 index and
three byte masks of its size, about 2.75x the tensor in float32 (E), plus E/32 per model for
the packed masks; E more when the L1 rescale needs the magnitudes kept. Every elementwise
operation is the one the whole-tensor form did, so the bits are the same.

A model whose tensor is the base's own (the same bytes of the same open file, e.g. the base
under an adapter that does not touch this tensor) has a task vector of exact zeros: it changes
no vote, no sum and no divisor, so it is not read (its random mask is still drawn, to keep the
other models' masks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from ...errors import UsageError
from ..base import LazyInputs, LazyTensor, MergeInputs, register
from ._common import (as_lazy, blocks, collect, generator_for, numel, per_model, require_base,
                      require_models, work_dtype)
from ._sparsify import Selection, select

__all__ = ["Family", "FAMILY", "generalized_task_arithmetic", "stream_task_arithmetic"]

CONSENSUS = ("none", "sum", "count")


@dataclass(frozen=True)
class Family:
    """One setting of the generalized task arithmetic function."""
    name: str
    sparsification: str  # see _sparsify.SPARSIFICATIONS
    consensus: str  # one of CONSENSUS
    normalize: bool  # default of the ``normalize`` option
    rescale: bool  # default of the ``rescale`` option
    paper: str

    @property
    def random(self) -> bool:
        return self.sparsification in ("random", "della")

    def model_params(self) -> dict[str, float]:
        # density on task_arithmetic: mergekit takes (and ignores) it, so a config of its runs here
        params = {"weight": 1.0, "density": 1.0}
        if self.sparsification == "magnitude_outliers":
            params["gamma"] = 0.01
        if self.sparsification == "della":
            params["epsilon"] = 0.15
        return params

    def options(self) -> dict[str, object]:
        # int8_mask: mergekit's choice of dtype for its sign masks (memory only, the result is the
        # same); ours are bit-packed already, so it is taken and has no effect
        options: dict[str, object] = {"normalize": self.normalize, "rescale": self.rescale, "lambda": 1.0,
                                      "int8_mask": False}
        if self.random:
            options["seed"] = 0
        return options


# torch's kernels on bool tensors are not vectorised (torch.where over 2^18 floats: 40x the time of
# a multiplication): a mask is turned into numbers through its uint8 view, and "x where m else +0"
# is x's bits and-ed with all ones or all zeros. Both give exactly where()'s values.
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


def _as_number(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask as 1.0 / 0.0 of ``dtype``."""
    return mask.view(torch.uint8).to(dtype)


def _kept_or_zero(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``torch.where(mask, values, 0.0)``: the entries of ``values`` where ``mask``, +0 elsewhere."""
    bits = _BITS[values.dtype]
    ones = mask.view(torch.uint8).to(bits).neg_()  # (n,) all ones where kept, zeros elsewhere
    return values.view(bits).bitwise_and(ones).view(values.dtype)


def _elected_sign(deltas: list[torch.Tensor], method: str, like: torch.Tensor) -> torch.Tensor:
    """The sign each entry votes for (ties to +1), from the weighted task vectors."""
    votes = torch.zeros_like(like)  # (n,)
    for delta in deltas:
        votes.add_(delta if method == "sum" else delta.sign())
    return _as_number(votes >= 0, like.dtype).mul_(2).sub_(1)  # (n,) of ±1.0, -1 where NaN


def _task_vector(base: LazyTensor, model: LazyTensor, dtype: torch.dtype) -> torch.Tensor:
    """``model - base`` in ``dtype``, whole, ``(*shape)``, built block by block."""
    out = torch.empty(numel(base.shape), dtype=dtype)  # (numel,)
    for start, stop in blocks(out.numel()):
        torch.sub(model.flat(start, stop).to(dtype), base.flat(start, stop).to(dtype), out=out[start:stop])
    return out.reshape(base.shape)


def stream_task_arithmetic(inputs: LazyInputs, family: Family) -> Iterator[torch.Tensor]:
    """:func:`generalized_task_arithmetic` over lazy inputs, yielding the flattened result in
    consecutive 1-D blocks (two passes, see the module docstring)."""
    base = require_base(family.name, inputs)
    require_models(family.name, inputs, 0)
    dtype = work_dtype(base)
    count = numel(base.shape)
    if not inputs.models:
        for start, stop in blocks(count):
            yield base.flat(start, stop).to(dtype).clone()
        return
    opts = {**family.options(), **inputs.options}
    defaults = family.model_params()
    densities = per_model(inputs, "density", defaults.get("density", 1.0))
    gammas = per_model(inputs, "gamma", defaults.get("gamma", 0.0))
    epsilons = per_model(inputs, "epsilon", defaults.get("epsilon", 0.0))
    generator = generator_for(int(opts["seed"]), inputs.name) if family.random else None
    weights = per_model(inputs, "weight", defaults["weight"])
    # (a non-finite weight makes even a zero task vector NaN: such a model is read as usual)
    zero = [m.key == base.key and math.isfinite(w) for m, w in zip(inputs.models, weights)]
    # pass 1, one model at a time: only a bit-packed mask per model outlives its task vector
    selections: list[Selection | None] = []
    for i, m in enumerate(inputs.models):
        if zero[i] and not family.random:
            selections.append(None)
            continue
        selections.append(select(family.sparsification, base.shape, dtype,
                                 lambda m=m: _task_vector(base, m, dtype), density=densities[i],
                                 rescale=bool(opts["rescale"]), gamma=gammas[i], epsilon=epsilons[i],
                                 generator=generator))
    used = [i for i in range(len(inputs.models)) if not zero[i]]
    total = float(sum(torch.tensor(weights, dtype=dtype)))
    # pass 2, block by block: every operation is elementwise
    for start, stop in blocks(count):
        b = base.flat(start, stop).to(dtype)  # (n,)
        deltas = [selections[i].apply(inputs.models[i].flat(start, stop).to(dtype) - b, start).mul_(weights[i])
                  for i in used]  # one weighted task vector block per model, never stacked
        yield b + _combine(deltas, [weights[i] for i in used], family.consensus, total, opts, b)


def _combine(deltas: list[torch.Tensor], weights: list[float], consensus: str, total: float, opts: dict,
             like: torch.Tensor) -> torch.Tensor:
    """``lambda * merged / divisor`` of one block (module docstring) from its weighted task
    vectors ``(n,)``; ``total`` is the sum of every model's weight."""
    merged = torch.zeros_like(like)  # (n,)
    if consensus == "none":
        for delta in deltas:
            merged.add_(delta)
        divisor = 1.0 if abs(total) < 1e-8 else total
    else:
        elected = _elected_sign(deltas, consensus, like)  # (n,) of ±1
        divisor = torch.zeros_like(like)  # (n,)
        for delta, weight in zip(deltas, weights):
            agree = delta.sign() == elected  # zeros never agree
            merged.add_(_kept_or_zero(delta, agree))
            divisor.add_(_as_number(agree, like.dtype), alpha=float(weight))
        divisor.add_(_as_number(divisor == 0, like.dtype))  # 1 where no model agrees (±0 + 1 = 1)
    if opts["normalize"]:
        merged = merged / divisor
    lam = float(opts["lambda"])
    return merged * lam if lam != 1.0 else merged


def generalized_task_arithmetic(inputs: MergeInputs, family: Family) -> torch.Tensor:
    """Merge task vectors relative to the base with ``family``'s settings (module docstring).

    Args:
        inputs: base and models (params/options as in the module docstring).
        family: which member of the family.

    Returns:
        ``base + lambda * merged`` in float32 (float64 for float64 inputs).

    Raises:
        UsageError: no base, shapes differ, or sparsification parameters out of range.
    """
    require_base(family.name, inputs)
    return collect(stream_task_arithmetic(as_lazy(inputs), family), tuple(inputs.base.shape))


_ARXIV = "https://arxiv.org/abs/"
FAMILY = (
    Family("task_arithmetic", "none", "none", False, False, _ARXIV + "2212.04089"),
    Family("ties", "magnitude", "sum", True, False, _ARXIV + "2306.01708"),
    Family("dare_linear", "random", "none", False, True, _ARXIV + "2311.03099"),
    Family("dare_ties", "random", "sum", False, True, _ARXIV + "2311.03099"),
    Family("breadcrumbs", "magnitude_outliers", "none", False, False, _ARXIV + "2312.06795"),
    Family("breadcrumbs_ties", "magnitude_outliers", "sum", False, False, _ARXIV + "2312.06795"),
    Family("della", "della", "sum", True, True, _ARXIV + "2406.11617"),
    Family("della_linear", "della", "none", False, True, _ARXIV + "2406.11617"),
)


def _register(family: Family) -> None:
    if family.consensus not in CONSENSUS:
        raise UsageError(f"unknown consensus {family.consensus!r}; known: {', '.join(CONSENSUS)}")

    def merge(inputs: MergeInputs) -> torch.Tensor:
        return generalized_task_arithmetic(inputs, family)

    def stream(inputs: LazyInputs) -> Iterator[torch.Tensor]:
        return stream_task_arithmetic(inputs, family)

    merge.__name__ = merge.__qualname__ = family.name
    merge.__doc__ = (f"{family.name}: generalized task arithmetic with sparsification "
                     f"{family.sparsification!r} and consensus {family.consensus!r} (module docstring).")
    register(family.name, needs_base=True, paper=family.paper, model_params=family.model_params(),
             options=family.options(), stream=stream)(merge)


for _family in FAMILY:
    _register(_family)
del _family
