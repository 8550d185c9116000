"""Linear merge (model soup): a weighted average of the models' tensors.

Wortsman et al. 2022, "Model soups", https://arxiv.org/abs/2203.05482. Same as mergekit's
``linear``: ``sum_i w_i theta_i``, divided by ``sum_i w_i`` when ``normalize`` (the default).
"""

from __future__ import annotations

import torch

from ...errors import UsageError
from ..base import MergeInputs, register
from ._common import column, option, per_model, require_models, stack, work_dtype

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
    stacked = stack(inputs.models, work_dtype(inputs.models[0]))  # (models, *shape)
    weights = column(per_model(inputs, "weight", MODEL_PARAMS["weight"]), stacked)  # (models, 1, ...)
    total = (stacked * weights).sum(0)  # (*shape)
    if not option(inputs, "normalize", OPTIONS):
        return total
    divisor = float(weights.sum())
    if divisor == 0.0:
        # mergekit divides anyway and writes NaN/inf; a message is more useful.
        raise UsageError(f"linear: the weights of tensor {inputs.name!r} sum to 0, so they cannot be "
                         "normalised; change the weights or set normalize: false")
    return total / divisor
