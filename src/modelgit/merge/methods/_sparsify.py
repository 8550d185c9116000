"""Sparsification of one task vector (``model - base``), as in mergekit's ``sparsify.py``.

Four ways to keep a ``density`` fraction of the entries:

* ``magnitude`` (TIES): the largest ``|delta|``;
* ``magnitude_outliers`` (Model Breadcrumbs): drop the top ``gamma`` fraction, keep the next
  ``density`` fraction, drop the rest;
* ``random`` (DARE): each entry kept with probability ``density``;
* ``della`` (DELLA's MagPrune): keep probability grows linearly with the entry's magnitude rank
  within its row, from ``density - epsilon`` to ``density + epsilon``.

With ``rescale``, DARE divides the kept entries by ``density`` (its paper's rule, unbiased per
entry); the others scale the kept entries so that the L1 norm of the task vector is unchanged
(mergekit's rule). ``density >= 1`` always returns the task vector untouched.
"""

from __future__ import annotations

import torch

from ...errors import UsageError

__all__ = ["SPARSIFICATIONS", "sparsify"]

SPARSIFICATIONS = ("none", "magnitude", "magnitude_outliers", "random", "della")


def _rescaled(delta: torch.Tensor, mask: torch.Tensor, rescale: bool, eps: float = 1e-7) -> torch.Tensor:
    """``delta * mask``, scaled back to ``delta``'s L1 norm when ``rescale`` (and neither is ~0)."""
    masked = delta * mask
    if not rescale:
        return masked
    before, after = delta.abs().sum(), masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def _magnitude(delta: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)  # (numel,)
    # a full argsort, as mergekit does, on purpose: float32 task vectors have many exact ties in
    # magnitude, and which of the tied entries survive is decided by torch's (unstable) sort
    # order; a faster selection (np.partition: 6x faster on a 1 GB TIES merge, measured) keeps
    # different tied entries and the outputs then differ from mergekit's at those entries
    mask[torch.argsort(delta.abs().reshape(-1), descending=True)[:k]] = 1
    return _rescaled(delta, mask.reshape(delta.shape), rescale)


def _magnitude_outliers(delta: torch.Tensor, density: float, gamma: float, rescale: bool) -> torch.Tensor:
    n = delta.numel()
    keep, n_top = int(density * n), int(gamma * n)
    n_bottom = max(0, n - keep - n_top)  # fewer outliers dropped when density + gamma > 1
    order = torch.sort(delta.abs().reshape(-1), descending=False).indices  # (numel,) ascending |delta|
    mask = torch.zeros(n, dtype=delta.dtype)  # (numel,)
    mask[order[n_bottom:n_bottom + keep]] = 1
    return _rescaled(delta, mask.reshape(delta.shape), rescale)


def _random(delta: torch.Tensor, density: float, rescale: bool, generator: torch.Generator) -> torch.Tensor:
    if density <= 0:
        return torch.zeros_like(delta)
    mask = torch.bernoulli(torch.full_like(delta, density), generator=generator)  # (*shape) of 0/1
    kept = delta * mask
    return kept / density if rescale else kept


def _della(delta: torch.Tensor, density: float, epsilon: float, rescale: bool,
           generator: torch.Generator) -> torch.Tensor:
    if density <= 0:
        return torch.zeros_like(delta)
    if density - epsilon <= 0 or density + epsilon >= 1:
        raise UsageError(f"della: density ± epsilon must lie in (0, 1), got density {density} and "
                         f"epsilon {epsilon}; lower epsilon or move density away from 0 and 1")
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)  # (rows, cols)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(delta.dtype)  # (rows, cols), 0 = smallest
    span = float(rows.shape[1] - 1)
    # a row of one entry has no rank order: keep it with probability density
    rank_norm = ranks / span if span > 0 else torch.full_like(ranks, 0.5)  # (rows, cols) in [0, 1]
    probs = (density - epsilon) + rank_norm * (2 * epsilon)
    mask = torch.bernoulli(probs, generator=generator).reshape(delta.shape)
    return _rescaled(delta, mask, rescale)


def sparsify(delta: torch.Tensor, method: str, *, density: float, rescale: bool, gamma: float = 0.0,
             epsilon: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep about a ``density`` fraction of one task vector's entries.

    Args:
        delta: one model's task vector, ``(*shape)``, in the working dtype; not modified.
        method: one of :data:`SPARSIFICATIONS`.
        density: fraction of entries to keep; ``>= 1`` keeps everything.
        rescale: rescale the kept entries (see the module docstring).
        gamma: ``magnitude_outliers`` only: fraction of largest entries dropped.
        epsilon: ``della`` only: half-width of the keep-probability range.
        generator: for ``random`` and ``della``: the source of randomness.

    Returns:
        A new tensor of ``delta``'s shape (``delta`` itself when nothing is dropped).

    Raises:
        UsageError: unknown method, or DELLA's density/epsilon out of range.
    """
    if method not in SPARSIFICATIONS:
        raise UsageError(f"unknown sparsification {method!r}; known: {', '.join(SPARSIFICATIONS)}")
    if method == "none" or density >= 1:
        return delta
    if method == "magnitude":
        return _magnitude(delta, density, rescale)
    if method == "magnitude_outliers":
        return _magnitude_outliers(delta, density, gamma, rescale)
    if method == "random":
        return _random(delta, density, rescale, generator)
    return _della(delta, density, epsilon, rescale, generator)
