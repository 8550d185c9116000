"""Linear merge (model soup): a weighted average of the models' tensors.

Wortsman et al. 2022, "Model soups", https://arxiv.org/abs/2203.05482. Same as mergekit's
``linear``: ``sum_i w_i theta_i``, divided by ``sum_i w_i`` when ``normalize`` (the default).
A recipe's ``base_model`` is merged as one more model, as in mergekit (listed among the models with
its weight, or added after them). Streamed block by block: the models are added into one
block-sized accumulator as they are read, so a merge holds a few blocks, never a whole input.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ...errors import UsageError
from ..base import LazyInputs, MergeInputs, register
from ._common import as_lazy, blocks, collect, numel, option, per_model, require_models, work_dtype

__all__ = ["linear", "stream_linear"]

MODEL_PARAMS = {"weight": 1.0}
OPTIONS = {"normalize": True}


def stream_linear(inputs: LazyInputs) -> Iterator[torch.Tensor]:
    """:func:`linear` over lazy inputs, yielding the flattened result in consecutive 1-D blocks
    (each valid until the next is asked for: the buffers are reused)."""
    require_models("linear", inputs, 1)
    first = inputs.models[0]
    dtype = work_dtype(first)
    weights = per_model(inputs, "weight", MODEL_PARAMS["weight"])
    for model in inputs.models:
        if tuple(model.shape) != tuple(first.shape):
            raise UsageError(f"linear: tensor {inputs.name!r} has shapes {list(first.shape)} and "
                             f"{list(model.shape)} in different models")
    normalize = option(inputs, "normalize", OPTIONS)
    divisor = float(sum(weights))
    if normalize and divisor == 0.0:
        # mergekit divides anyway and writes NaN/inf; a message is more useful.
        raise UsageError(f"linear: the weights of tensor {inputs.name!r} sum to 0, so they cannot be "
                         "normalised; change the weights or set normalize: false")
    count = numel(first.shape)
    # one accumulator, one conversion and one result buffer, reused block after block (fresh
    # memory costs page faults); the operations are those on fresh tensors, so the bits too
    size = next(blocks(count))[1]  # the first block is the largest
    acc, result = torch.empty(size, dtype=dtype), torch.empty(size if normalize else 0, dtype=dtype)
    convert = torch.empty(size if any(m.dtype != dtype for m in inputs.models) else 0, dtype=dtype)
    for start, stop in blocks(count):
        total = acc[: stop - start].zero_()  # (n,)
        for model, weight in zip(inputs.models, weights):
            block = model.flat(start, stop)
            if block.dtype != dtype:
                block = convert[: stop - start].copy_(block)
            total.add_(block, alpha=float(weight))
        yield torch.div(total, divisor, out=result[: stop - start]) if normalize else total


@register("linear", needs_base=False, paper="https://arxiv.org/abs/2203.05482",
          model_params=MODEL_PARAMS, options=OPTIONS, stream=stream_linear, base_is_input=True)
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
    return collect(stream_linear(as_lazy(inputs)), tuple(inputs.models[0].shape))
