"""Linear merge (model soup): a weighted average of the models' tensors.

Wortsman et al. 2022, "Model soups", https://arxiv.org/abs/2203.05482. Same as mergekit's
``linear``: ``sum_i w_i theta_i``, divided by ``sum_i w_i`` when ``normalize`` (the default).
"""

from __future__ import annotations

import torch

from ...errors import UsageError
from ..base import MergeInputs, register
from ._common import option, per_model, require_models, work_dtype

__all__ = ["linear"]

MODEL_PARAMS = {"weight": 1.0}
OPTIONS = {"normalize": True}


@register("linear", needs_base=False, paper="https://arxiv.org/abs/2203.05482",
          model_params=MODEL_PARAMS, options=OPTIONS)
def linear(inputs: MergeInputs) -> torch.Tensor:
    """Weighted average of ``inputs.models`` (the base, if any, is not used).

    Args:
        inputs: ``params[i]["weight"]`` (default 1.0); option ``normalize`` (default True)
            divides by the sum of the weights.

    Returns:
        The merged tensor, of the models' shape, in float32 (float64 for float64 inputs).

    Raises:
        UsageError: no models, shapes differ, or ``normalize`` with weights summing to 0.
    """
    require_models("linear", inputs, 1)
    dtype = work_dtype(inputs.models[0])
    weights = per_model(inputs, "weight", MODEL_PARAMS["weight"])
    # accumulate model by model: one output-sized buffer instead of a (models, *shape) stack
    total = torch.zeros(inputs.models[0].shape, dtype=dtype)  # (*shape)
    for model, weight in zip(inputs.models, weights):
        if model.shape != total.shape:
            raise UsageError(f"linear: tensor {inputs.name!r} has shapes {list(total.shape)} and "
                             f"{list(model.shape)} in different models")
        total.add_(model.to(dtype), alpha=float(weight))
    if not option(inputs, "normalize", OPTIONS):
        return total
    divisor = float(sum(weights))
    if divisor == 0.0:
        # mergekit divides anyway and writes NaN/inf; a message is more useful.
        raise UsageError(f"linear: the weights of tensor {inputs.name!r} sum to 0, so they cannot be "
                         "normalised; change the weights or set normalize: false")
    return total / divisor
