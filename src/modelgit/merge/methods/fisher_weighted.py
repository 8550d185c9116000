"""Fisher-weighted averaging: a per-entry average weighted by each model's diagonal Fisher.

Matena & Raffel 2022, "Merging Models with Fisher-Weighted Averaging",
https://arxiv.org/abs/2111.09832. Per entry:

    result = sum_i w_i F_i theta_i / sum_i w_i F_i,   F_i = max(Fisher_i, epsilon)

so entries a model is sure about (large Fisher) follow that model, and where every Fisher is 0
the floor makes it the plain weighted average.

**Where the Fishers come from.** ``MergeInputs.params`` hold floats only, so the Fisher tensors
travel in ``options["fisher"]``: a list with one tensor per model, in the order of
``inputs.models``, each of the models' shape (the engine loads, per output tensor, the entry of
that name from each model's Fisher file, e.g. written by :func:`modelgit.merge.fisher.save_fisher`).
Options: ``fisher`` (required), ``epsilon`` (floor, default 1e-8). Per model: ``weight`` (1.0).
In a recipe, each model names its Fisher file (``parameters: {fisher: FILE}``); a ``base_model``
is one more model (it needs its Fisher file too), as linear treats it.
"""

from __future__ import annotations

import torch

from ...errors import UsageError
from ..base import MergeInputs, register
from ._common import column, option, per_model, require_models, stack, work_dtype

__all__ = ["fisher_merge"]

MODEL_PARAMS = {"weight": 1.0}
OPTIONS = {"fisher": None, "epsilon": 1e-8}


def _fishers(inputs: MergeInputs) -> list[torch.Tensor]:
    fishers = option(inputs, "fisher", OPTIONS)
    if fishers is None:
        raise UsageError(f"fisher: tensor {inputs.name!r} has no Fisher information; pass one Fisher "
                         "tensor per model in options['fisher'] (see modelgit.merge.fisher)")
    fishers = list(fishers)
    if len(fishers) != len(inputs.models):
        raise UsageError(f"fisher: tensor {inputs.name!r} has {len(inputs.models)} models but "
                         f"{len(fishers)} Fisher tensors; give one per model")
    for i, f in enumerate(fishers):
        if tuple(f.shape) != tuple(inputs.models[i].shape):
            raise UsageError(f"fisher: the Fisher of model {i} for tensor {inputs.name!r} has shape "
                             f"{tuple(f.shape)}, the tensor {tuple(inputs.models[i].shape)}")
    return fishers


@register("fisher", needs_base=False, paper="https://arxiv.org/abs/2111.09832",
          model_params=MODEL_PARAMS, options=OPTIONS, base_is_input=True, model_files=("fisher",))
def fisher_merge(inputs: MergeInputs) -> torch.Tensor:
    """Fisher-weighted average of ``inputs.models`` (a base, if any, is not used).

    Args:
        inputs: models; ``options["fisher"]`` one diagonal Fisher per model; ``options["epsilon"]``;
            ``params[i]["weight"]``.

    Returns:
        The merged tensor in float32 (float64 for float64 inputs).

    Raises:
        UsageError: missing Fishers, wrong count or shape, or a non-positive floor.
    """
    require_models("fisher", inputs, 1)
    fishers = _fishers(inputs)
    epsilon = float(option(inputs, "epsilon", OPTIONS))
    if not epsilon > 0:
        raise UsageError(f"fisher: epsilon must be > 0 (it keeps the denominator positive), got {epsilon}")
    dtype = work_dtype(inputs.models[0])
    thetas = stack(inputs.models, dtype)  # (models, *shape)
    f = stack(fishers, dtype).clamp(min=epsilon)  # (models, *shape)
    wf = column(per_model(inputs, "weight", MODEL_PARAMS["weight"]), thetas) * f  # (models, *shape)
    return (wf * thetas).sum(0) / wf.sum(0)
