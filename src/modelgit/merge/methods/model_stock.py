"""Model Stock: interpolate between the base and the average of fine-tuned models.

Jang et al. 2024, https://arxiv.org/abs/2403.19522. With ``N >= 2`` models and their task vectors
``d_i = theta_i - base``, ``cos`` is the mean over pairs ``i < j`` of ``cos(d_i, d_j)`` and

    t = N cos / (1 + (N - 1) cos),   result = t * mean_i(theta_i) + (1 - t) * base.

As mergekit's ``model_stock``: each pairwise cosine divides by ``max(|d_i||d_j|, 1e-6)`` and is
clamped to [-1, 1]; where ``|1 + (N - 1) cos| < 1e-6`` there is no finite estimate and the base is
kept (``t = 0``); ``t`` itself is not clamped. With the option ``filter_wise`` the angle is taken per
row along the last axis (a 1-D tensor is one row) instead of over the whole flattened tensor.
Weights are not used.
"""

from __future__ import annotations

import torch

from ..base import MergeInputs, register
from ._common import option, require_base, require_models, work_dtype

__all__ = ["model_stock"]

OPTIONS = {"filter_wise": False}


@register("model_stock", needs_base=True, paper="https://arxiv.org/abs/2403.19522", options=OPTIONS,
          inputs=(3, None))
def model_stock(inputs: MergeInputs) -> torch.Tensor:
    """Model Stock merge of one tensor.

    Args:
        inputs: base and at least two models; option ``filter_wise`` (default False).

    Returns:
        The merged tensor in float32 (float64 for float64 inputs).

    Raises:
        UsageError: no base, fewer than two models, or shapes differ.
    """
    base = require_base("model_stock", inputs)
    require_models("model_stock", inputs, 2)
    dtype = work_dtype(base)
    shape = base.shape
    if option(inputs, "filter_wise", OPTIONS):
        w0 = base.to(dtype).reshape(1, -1) if base.dim() < 2 else base.to(dtype)  # (..., cols)
    else:
        w0 = base.to(dtype).reshape(-1)  # (numel,)
    ws = [m.to(dtype).reshape(w0.shape) for m in inputs.models]  # each like w0
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)  # (...)
            cosines.append(((a * b).sum(-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(0).unsqueeze(-1)  # (..., 1); () -> (1,) when not filter-wise
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, 1.0, denominator))
    average = sum(ws) / n  # same summation order as mergekit
    return (t * average + (1 - t) * w0).reshape(shape)
