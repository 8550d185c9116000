"""Passthrough: one model's tensor, unchanged (the engine's layer slicing and stacking).

As mergekit's ``passthrough`` (which has no paper): exactly one input, optionally scaled by the
per-model ``scale`` (default 1.0, i.e. untouched: the dtype is kept, nothing is computed). A
recipe's ``base_model`` is an input like any model, as in mergekit, so it can only be the one model.
"""

from __future__ import annotations

import torch

from ..base import MergeInputs, register
from ._common import per_model, require_models, work_dtype

__all__ = ["passthrough"]

MODEL_PARAMS = {"scale": 1.0}


@register("passthrough", needs_base=False, paper="https://github.com/arcee-ai/mergekit",
          model_params=MODEL_PARAMS, options={}, base_is_input=True, inputs=(1, 1))
def passthrough(inputs: MergeInputs) -> torch.Tensor:
    """Return the single model's tensor.

    Args:
        inputs: exactly one model (a base, if given, is ignored); ``params[0]["scale"]``.

    Returns:
        A copy of the model's tensor (a copy, so that a caller writing into the result cannot
        corrupt its input), times ``scale`` in float32/float64 when ``scale`` is not 1.

    Raises:
        UsageError: not exactly one model.
    """
    require_models("passthrough", inputs, 1, 1)
    (model,) = inputs.models
    (scale,) = per_model(inputs, "scale", MODEL_PARAMS["scale"])
    if scale == 1.0:
        return model.clone()
    return model.to(work_dtype(model)) * scale
