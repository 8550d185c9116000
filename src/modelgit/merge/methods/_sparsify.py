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

The work is split in two, so that a streamed merge need not hold task vectors whole:
:func:`select` looks at one whole task vector once and returns a :class:`Selection` (a
bit-packed mask and the rescale factor), and :meth:`Selection.apply` keeps and scales the entries of any piece of
it. ``sparsify`` is the two in a row, and every elementwise operation is the one the whole-tensor
form used, so both give the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ...errors import UsageError
from ._sortselect import emulation_matches, first_k_mask

__all__ = ["SPARSIFICATIONS", "Selection", "select", "sparsify"]

SPARSIFICATIONS = ("none", "magnitude", "magnitude_outliers", "random", "della")
_EPS = 1e-7  # an L1 norm below this is not rescaled


@dataclass(frozen=True)
class Selection:
    """Which entries of one task vector are kept, and how the kept ones are scaled."""

    mask: torch.Tensor | None = None  # (ceil(numel / 8),) uint8, bit-packed, 1 = kept; None keeps all
    factor: torch.Tensor | None = None  # () L1 rescale, multiplies the kept entries
    divisor: float | None = None  # DARE's rescale, divides the kept entries
    drop_all: bool = False  # nothing kept: every entry becomes +0

    @property
    def keeps_all(self) -> bool:
        return self.mask is None and not self.drop_all

    def apply(self, delta: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The kept, rescaled entries of ``delta``: ``(n,)`` elements of the flattened task vector
        from flat index ``start``. Returns ``delta`` itself when every entry is kept."""
        if self.drop_all:
            return torch.zeros_like(delta)
        if self.mask is None:
            return delta
        kept = delta * _unpack(self.mask, start, start + delta.numel()).to(delta.dtype)
        if self.factor is not None:
            kept = kept * self.factor
        if self.divisor is not None:
            kept = kept / self.divisor
        return kept


def _pack(mask: torch.Tensor) -> torch.Tensor:
    """A (numel,) bool mask as bits: the masks of every model are kept until the end of a merge."""
    return torch.from_numpy(np.packbits(mask.numpy()))  # (ceil(numel / 8),) uint8


def _unpack(bits: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Entries ``[start, stop)`` of a packed mask as 0/1 uint8, ``(stop - start,)``."""
    first = start // 8
    chunk = bits[first:-(-stop // 8)].numpy()
    return torch.from_numpy(np.unpackbits(chunk, count=stop - first * 8)[start - first * 8:])


def _bits_at(positions: torch.Tensor, count: int) -> torch.Tensor:
    """The packed mask (as :func:`_pack`) of ``count`` entries with the distinct ``positions``
    set, built a chunk of positions at a time: no bool mask of the task vector's size."""
    bits = torch.zeros(-(-count // 8), dtype=torch.uint8)  # (ceil(numel / 8),)
    high = torch.tensor(128, dtype=torch.uint8)  # np.packbits order: first entry in the top bit
    for chunk in positions.split(1 << 18):
        # distinct positions set distinct bits, so adding them into a byte is or-ing them
        bits.index_put_((chunk >> 3,), high >> (chunk & 7).to(torch.uint8), accumulate=True)
    return bits


def _kept_first(magnitude: Callable[[], torch.Tensor], count: int, descending: bool, first: int, stop: int,
                keep_values: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The packed mask of the entries at positions ``[first, stop)`` of the magnitudes sorted by
    torch's sort (unstable), the kernel of ``torch.argsort``; and, with ``keep_values``, the
    magnitudes (``magnitude()``, the task vector's shape) in their own order.

    The set comes from :mod:`._sortselect`, which finds it exactly as the sort does, in linear
    time and without the sort's int64 indices; ``torch.sort`` itself runs only where that
    emulation does not apply (NaN, a sort that would fall back to heap sort, a torch whose sort
    is not the one emulated). Without ``keep_values`` the magnitudes are worked on in place.
    """
    magnitudes = magnitude()  # (*shape), ours
    values = magnitudes.reshape(-1).numpy()  # (numel,) the same memory
    mask = None
    if emulation_matches() and not np.isnan(values).any():
        mask = _emulated(values, descending, first, stop, keep_values)
        if mask is not None:
            return _pack(torch.from_numpy(mask)), magnitudes if keep_values else None
        if descending and first == 0 and not keep_values:
            magnitudes = magnitude()  # the emulation scrambled them before it gave up
    flat = magnitudes.reshape(-1)  # (numel,)
    if keep_values:
        order = torch.sort(flat, descending=descending, stable=False).indices  # (numel,)
    else:
        order = torch.empty(count, dtype=torch.int64)  # (numel,)
        torch.sort(flat, descending=descending, stable=False, out=(flat, order))
    del flat
    return _bits_at(order[first:stop], count), magnitudes if keep_values else None


def _emulated(values: np.ndarray, descending: bool, first: int, stop: int, keep_values: bool) -> np.ndarray | None:
    """:func:`_kept_first`'s set as a ``(numel,)`` bool mask, or None (see ``first_k_mask``).
    ``values`` is scrambled when the sort is descending from 0 and ``keep_values`` is false."""
    if descending and first == 0:
        return first_k_mask(values.copy() if keep_values else values, stop)
    # an ascending sort of v compares exactly as a descending sort of -v (signed zeros included)
    def work() -> np.ndarray:
        return values.copy() if descending else np.negative(values)

    mask = first_k_mask(work(), stop)
    if mask is None or first == 0:
        return mask
    before = first_k_mask(work(), first)
    if before is None:
        return None
    return np.greater(mask, before, out=mask)  # kept before ``stop`` but not before ``first``


def _l1_factor(magnitudes: torch.Tensor, bits: torch.Tensor) -> torch.Tensor | None:
    """``|delta|_1 / |kept|_1`` from ``|delta|`` (the task vector's shape) and the packed mask,
    or None when either is ~0. Summed over the same shapes as ``delta.abs().sum()`` and
    ``(delta * mask).abs().sum()``, so the float result is theirs."""
    mask = _unpack(bits, 0, magnitudes.numel()).reshape(magnitudes.shape).to(magnitudes.dtype)
    before = magnitudes.sum()
    after = (magnitudes * mask).sum()
    if before < _EPS or after < _EPS:
        return None
    return before / after


def _magnitude(delta: Callable[[], torch.Tensor], count: int, density: float, rescale: bool) -> Selection:
    if density <= 0 or count == 0:
        return Selection(drop_all=True)
    k = max(1, int(density * count))
    # the set torch's sort (mergekit's argsort) puts first, on purpose: float32 task vectors have
    # many exact ties in magnitude, and which of the tied entries survive is decided by the
    # sort's (unstable) order; a plain selection (np.partition) keeps other tied entries, and
    # the outputs then differ from mergekit's at those entries (see _sortselect)
    bits, magnitudes = _kept_first(lambda: delta().abs_(), count, True, 0, k, keep_values=rescale)
    factor = _l1_factor(magnitudes, bits) if rescale else None  # needs |delta| in its own order
    del magnitudes
    return Selection(bits, factor)


def _magnitude_outliers(delta: Callable[[], torch.Tensor], count: int, density: float, gamma: float,
                        rescale: bool) -> Selection:
    keep, n_top = int(density * count), int(gamma * count)
    n_bottom = max(0, count - keep - n_top)  # fewer outliers dropped when density + gamma > 1
    bits, magnitudes = _kept_first(lambda: delta().abs_(), count, False, n_bottom, n_bottom + keep,
                                   keep_values=rescale)
    factor = _l1_factor(magnitudes, bits) if rescale else None
    del magnitudes
    return Selection(bits, factor)


def _random(shape: tuple[int, ...], dtype: torch.dtype, density: float, rescale: bool,
            generator: torch.Generator) -> Selection:
    if density <= 0:
        return Selection(drop_all=True)
    keep = torch.bernoulli(torch.full(shape, density, dtype=dtype), generator=generator)  # (*shape) of 0/1
    return Selection(_pack(keep.reshape(-1).bool()), divisor=density if rescale else None)


def _della(delta: Callable[[], torch.Tensor], density: float, epsilon: float, rescale: bool,
           generator: torch.Generator) -> Selection:
    if density <= 0:
        return Selection(drop_all=True)
    if density - epsilon <= 0 or density + epsilon >= 1:
        raise UsageError(f"della: density ± epsilon must lie in (0, 1), got density {density} and "
                         f"epsilon {epsilon}; lower epsilon or move density away from 0 and 1")
    magnitudes = delta().abs_()  # (*shape)
    rows = magnitudes.reshape(1, -1) if magnitudes.dim() < 2 else \
        magnitudes.reshape(magnitudes.shape[0], -1)  # (rows, cols)
    order = rows.argsort(dim=1)  # (rows, cols)
    # each entry's rank within its row (0 = smallest): the inverse permutation of the argsort,
    # which is what a second argsort would give, without sorting again
    positions = torch.arange(rows.shape[1]).to(magnitudes.dtype).expand(rows.shape)  # (rows, cols)
    ranks = torch.empty(rows.shape, dtype=magnitudes.dtype).scatter_(1, order, positions)
    del order
    span = float(rows.shape[1] - 1)
    # a row of one entry has no rank order: keep it with probability density
    probs = ranks.div_(span) if span > 0 else torch.full_like(ranks, 0.5)  # (rows, cols) in [0, 1]
    probs.mul_(2 * epsilon).add_(density - epsilon)
    bits = _pack(torch.bernoulli(probs, generator=generator).reshape(-1).bool())
    del probs, ranks
    return Selection(bits, _l1_factor(magnitudes, bits) if rescale else None)


def select(method: str, shape: tuple[int, ...], dtype: torch.dtype, delta: Callable[[], torch.Tensor], *,
           density: float, rescale: bool, gamma: float = 0.0, epsilon: float = 0.0,
           generator: torch.Generator | None = None) -> Selection:
    """Decide which entries of one task vector to keep (see the module docstring).

    Args:
        method: one of :data:`SPARSIFICATIONS`.
        shape, dtype: the task vector's shape and working dtype.
        delta: returns the whole task vector, ``(*shape)`` in ``dtype``, as a new tensor that
            this function may overwrite; called at most once, and only by the methods that
            look at the values (not ``none`` nor ``random``).
        density, rescale, gamma, epsilon, generator: as for :func:`sparsify`.

    Returns:
        The selection; the generator (``random``, ``della``) has drawn one value per entry.

    Raises:
        UsageError: unknown method, or DELLA's density/epsilon out of range.
    """
    if method not in SPARSIFICATIONS:
        raise UsageError(f"unknown sparsification {method!r}; known: {', '.join(SPARSIFICATIONS)}")
    if method == "none" or density >= 1:
        return Selection()
    count = 1
    for size in shape:
        count *= size
    if method == "magnitude":
        return _magnitude(delta, count, density, rescale)
    if method == "magnitude_outliers":
        return _magnitude_outliers(delta, count, density, gamma, rescale)
    if method == "random":
        return _random(shape, dtype, density, rescale, generator)
    return _della(delta, density, epsilon, rescale, generator)


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
    selection = select(method, tuple(delta.shape), delta.dtype, delta.clone, density=density,
                       rescale=rescale, gamma=gamma, epsilon=epsilon, generator=generator)
    if selection.keeps_all:
        return delta
    return selection.apply(delta.reshape(-1)).reshape(delta.shape)
