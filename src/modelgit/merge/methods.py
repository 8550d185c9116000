"""Merge methods: pure functions over tensors, registered by name with their paper.

A method takes the base tensor (``None`` for methods that need none), the tensors to merge, one
weight per tensor and keyword parameters, and returns a new tensor of the models' shape. It never
modifies its inputs. Arithmetic happens in float32 (float64 for float64 inputs); the caller casts
the result back to the checkpoint's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import UsageError

__all__ = ["MergeMethod", "METHODS", "register", "get_method"]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[..., torch.Tensor]
    needs_base: bool
    paper: str


METHODS: dict[str, MergeMethod] = {}


def register(name: str, needs_base: bool, paper: str):
    def wrap(fn):
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        METHODS[name] = MergeMethod(name, fn, needs_base, paper)
        return fn
    return wrap


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(f"unknown merge method {name!r}; known: {', '.join(sorted(METHODS))}") from None


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _stack(models: list[torch.Tensor]) -> torch.Tensor:
    dtype = _work_dtype(models[0])
    return torch.stack([m.to(dtype) for m in models])  # (models, *shape)


def _weights(weights: list[float], like: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(weights, dtype=like.dtype)
    return w.reshape(-1, *([1] * (like.dim() - 1)))  # (models, 1, ...)


@register("linear", needs_base=False, paper="https://arxiv.org/abs/2203.05482")
def linear(base, models, weights, normalize: bool = True, **_):
    """Weighted average (model soup); weights are normalised to sum to 1 unless told not to."""
    stacked = _stack(models)
    w = _weights(weights, stacked)
    total = stacked.mul(w).sum(0)
    return total / w.sum() if normalize and float(w.sum()) != 0 else total


@register("task_arithmetic", needs_base=True, paper="https://arxiv.org/abs/2212.04089")
def task_arithmetic(base, models, weights, lam: float = 1.0, **_):
    """base + lam * sum_i w_i (model_i - base)."""
    b = base.to(_work_dtype(models[0]))
    deltas = _stack(models) - b
    return b + lam * deltas.mul(_weights(weights, deltas)).sum(0)


def _keep_top(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the ``density`` fraction of largest-magnitude entries of each model's delta."""
    if density >= 1.0:
        return delta
    flat = delta.reshape(delta.shape[0], -1)  # (models, numel)
    k = max(1, int(round(density * flat.shape[1])))
    threshold = flat.abs().kthvalue(flat.shape[1] - k + 1, dim=1, keepdim=True).values
    return (flat * (flat.abs() >= threshold)).reshape(delta.shape)


@register("ties", needs_base=True, paper="https://arxiv.org/abs/2306.01708")
def ties(base, models, weights, density: float = 0.5, lam: float = 1.0, **_):
    """TIES: trim each task vector to its top ``density``, elect a sign per entry, average agreeing."""
    b = base.to(_work_dtype(models[0]))
    deltas = _keep_top(_stack(models) - b, density) * _weights(weights, b.unsqueeze(0))
    sign = torch.sign(deltas.sum(0))
    agree = (torch.sign(deltas) == sign) & (deltas != 0)
    count = agree.sum(0).clamp(min=1)
    merged = (deltas * agree).sum(0) / count
    return b + lam * merged


@register("dare", needs_base=True, paper="https://arxiv.org/abs/2311.03099")
def dare(base, models, weights, density: float = 0.5, lam: float = 1.0, seed: int = 0, **_):
    """DARE: drop each delta entry with probability 1-density, rescale the rest, add (seeded)."""
    b = base.to(_work_dtype(models[0]))
    deltas = _stack(models) - b
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(deltas.shape, generator=generator) < density
    rescaled = deltas * keep / max(density, 1e-12)
    return b + lam * rescaled.mul(_weights(weights, rescaled)).sum(0)
