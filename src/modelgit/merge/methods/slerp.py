"""SLERP: spherical linear interpolation between two models' tensors.

Shoemake 1985 (https://en.wikipedia.org/wiki/Slerp), as mergekit's ``slerp`` does it: each tensor
is flattened to one vector; the angle comes from the normalised vectors, the coefficients
``sin((1-t)θ)/sin θ`` and ``sin(tθ)/sin θ`` multiply the *unnormalised* vectors, and when the
vectors are nearly colinear (``|cos θ| > 0.9995``) it falls back to linear interpolation.

The endpoints are the base (``t = 0``) and the one model (``t = 1``), as in mergekit, whether the
recipe lists the base among its models or not; without a base (mergekit requires one), the first
and the second of two models.
"""

from __future__ import annotations

import torch

from ...errors import UsageError
from ..base import MergeInputs, register
from ._common import option, require_models, work_dtype

__all__ = ["slerp", "slerp_vectors"]

OPTIONS = {"t": 0.5}
DOT_THRESHOLD = 0.9995
EPS = 1e-8


def slerp_vectors(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Interpolate between two same-shaped tensors as flattened vectors.

    Args:
        t: position along the arc, 0 gives ``v0`` and 1 gives ``v1``.
        v0, v1: the endpoints, in the working dtype.

    Returns:
        The interpolated tensor, of ``v0``'s shape.
    """
    a, b = v0.reshape(-1), v1.reshape(-1)  # (numel,)
    if a.numel() == 0:
        return ((1 - t) * a + t * b).reshape(v0.shape)
    norm_a, norm_b = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)  # ()
    norm_a = torch.where(norm_a > EPS, norm_a, 1.0)  # a zero vector has no direction: leave it
    norm_b = torch.where(norm_b > EPS, norm_b, 1.0)
    dot = ((a / norm_a) * (b / norm_b)).sum().clamp(-1, 1)  # ()
    if abs(float(dot)) > DOT_THRESHOLD:
        coef_a, coef_b = 1 - t, t
    else:
        theta = torch.acos(dot)  # ()
        coef_a = torch.sin((1 - t) * theta) / torch.sin(theta)
        coef_b = torch.sin(t * theta) / torch.sin(theta)
    return (coef_a * a + coef_b * b).reshape(v0.shape)


@register("slerp", needs_base=False, paper="https://en.wikipedia.org/wiki/Slerp", options=OPTIONS,
          inputs=(2, 2))
def slerp(inputs: MergeInputs) -> torch.Tensor:
    """Spherical interpolation: base + one model, or two models without a base.

    Args:
        inputs: option ``t`` in [0, 1] (default 0.5); per-model params are not used.

    Returns:
        The interpolated tensor in float32 (float64 for float64 inputs).

    Raises:
        UsageError: not exactly two endpoints, or ``t`` outside [0, 1].
    """
    if inputs.base is not None:
        require_models("slerp", inputs, 1, 1)
        v0, v1 = inputs.base, inputs.models[0]
    else:
        require_models("slerp", inputs, 2, 2)
        v0, v1 = inputs.models
    t = float(option(inputs, "t", OPTIONS))
    if not 0.0 <= t <= 1.0:
        raise UsageError(f"slerp: t must be in [0, 1], got {t} for tensor {inputs.name!r}")
    dtype = work_dtype(v0)
    return slerp_vectors(t, v0.to(dtype), v1.to(dtype))
