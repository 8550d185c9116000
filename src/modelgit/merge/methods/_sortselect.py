"""The entries ``torch.sort`` puts first, found without sorting: an exact, linear-time emulation.

TIES keeps the k task-vector entries of largest magnitude, and when several entries tie at the
k-th magnitude, which of them are kept is decided by the order torch's unstable sort leaves them
in (mergekit calls ``torch.argsort``; see :mod:`._sparsify`). Float32 task vectors of millions of
entries have such ties in most large tensors, so matching mergekit (and our own earlier outputs)
bit for bit needs that order; a full sort of every task vector was 80% of a TIES merge.

On CPU, ``torch.sort(x, descending=True, stable=False)`` of a 1-D tensor is libstdc++'s
``std::sort`` over (value, index) pairs with the comparator ``a > b`` (torch parallelises a sort
only across rows, so the order does not depend on the thread count). That algorithm is
introsort::

    depth = 2 * floor(log2(n))
    loop(first, last):                       # positions [first, last)
        while last - first > 16:
            if depth == 0: heap-sort [first, last); return
            depth -= 1
            swap(first, median of (first + 1, mid, last - 1))   # mid = first + (last - first) // 2
            cut = Hoare partition of [first + 1, last) around the value at first
            loop(cut, last)                  # with the same depth
            last = cut
    insertion sort of everything

Every element left of a cut is >= every element right of it, so the final insertion sort never
moves an element across a cut, and it keeps equal elements in their order (a stable sort of
each segment of at most 16). The entries at positions ``[0, k)`` are therefore fixed by the
partitions of the segments that hold the boundary ``k``: this module runs exactly those (a
quickselect with the sort's own pivots and partition), each vectorised with numpy, following
only the side that holds ``k``: about 2n element visits instead of n log n comparisons.

The Hoare partition vectorises because its swaps pair the j-th element from the left that is
``<= p`` (a *left stop*) with the j-th element from the right that is ``>= p`` (a *right stop*),
for as long as the left one lies before the right one; see :func:`_split`.

Exactness is checked against ``torch.sort`` by the tests (arrays full of ties, every size
around the 16-element threshold) and once per process, before the first use, on an array with
many ties (:func:`emulation_matches`): if a torch build ever sorted differently, the callers
fall back to ``torch.sort``.
"""

from __future__ import annotations

import functools
from typing import Iterator

import numpy as np

__all__ = ["first_k_mask", "emulation_matches"]

_THRESHOLD = 16  # libstdc++'s _S_threshold: segments this small are left to the insertion sort


def _median_position(vals: np.ndarray, a: int, b: int, c: int) -> int:
    """libstdc++'s ``__move_median_to_first`` choice among positions a, b, c (comparator >)."""
    va, vb, vc = vals[a], vals[b], vals[c]
    if va > vb:
        if vb > vc:
            return b
        return c if va > vc else a
    if va > vc:
        return a
    return c if vb > vc else b


def _split(right_count: int, equal: np.ndarray, size: int) -> int:
    """X, the end of the region whose left stops are all swapped: the largest x in
    ``[0, size]`` with ``x + #(equal < x) <= right_count``.

    The j-th pair is swapped while the j-th left stop lies before the j-th right stop from the
    right, i.e. while the right stops after it are at least as many as the left stops up to it.
    Every element is a left stop (``< p``), a right stop (``> p``) or both (``== p``), so the
    stops of both kinds before x number ``x + #(equal < x)``, and the condition at x is that
    these are at most all the right stops.

    With j equal elements before x, x lies in ``(equal[j-1], equal[j]]`` and at most
    ``right_count - j``: the best x for each j, then the largest that is in its interval.
    """
    j = np.arange(equal.size + 1)  # (q + 1,) equal elements before x
    upper = np.minimum(np.append(equal, size), right_count - j)  # (q + 1,) largest x for each j
    lower = np.concatenate(([-1], equal))  # x must exceed the j-th equal element's position
    fits = upper > lower
    return int(upper[fits].max()) if fits.any() else 0


def _depth_limit(n: int) -> int:
    """Partitions the sort makes before it heap-sorts what is left: ``2 * floor(log2 n)``."""
    return 2 * (n.bit_length() - 1)


def _partition(vals: np.ndarray, idx: np.ndarray, k: int) -> int | None:
    """One introsort step on a segment longer than 16, in place: the median of three to the
    front, then the Hoare partition around it. Only what the caller will look at next is
    rearranged: with ``k`` (the boundary, relative to the segment) left of the cut, the left
    part's values and indices; right of it, the right part's values and both parts' indices
    (the left part's are kept); at the cut, the left part's indices.

    Returns:
        The cut: positions ``[0, cut)`` hold the entries >= the pivot, ``[cut, len)`` <= it;
        None if the segment has no left stop (impossible after a median of three).
    """
    m = vals.size
    mp = _median_position(vals, 1, m // 2, m - 1)
    vals[0], vals[mp] = vals[mp], vals[0]
    idx[0], idx[mp] = idx[mp], idx[0]
    p = vals[0]
    body, body_idx = vals[1:], idx[1:]  # (m - 1,) the range partitioned
    left = body <= p  # left stops: the scan from the left stops at x <= p
    right = body >= p  # right stops
    x = _split(int(np.count_nonzero(right)), np.flatnonzero(left & right), m - 1)
    pairs = int(np.count_nonzero(left[:x]))
    right_tail = right[x:]  # the pairs' right stops are the last `pairs` of these; at most one more
    if int(np.count_nonzero(right_tail)) > pairs:
        right_tail[int(np.argmax(right_tail))] = False  # the unpaired one: first from the left
    after = left[x:]
    ends = []
    if after.any():
        ends.append(x + int(np.argmax(after)))  # the next left stop: where the left scan ends
    if pairs:
        ends.append(x + int(np.argmax(right_tail)))  # the last swapped right stop
    if not ends:
        return None
    cut = 1 + min(ends)  # the scans crossed here: the partition's return value, in vals positions
    # the swaps: the j-th left stop from the left trades with the j-th right stop from the right
    for left_pos, right_pos in _pairs(left[:x], right_tail, x):
        right_ids = body_idx[right_pos]
        if k >= cut:
            body_idx[right_pos] = body_idx[left_pos]
            body[right_pos] = body[left_pos]
        body_idx[left_pos] = right_ids
        if k < cut:
            body[left_pos] = body[right_pos]
    return cut


_PAIR_CHUNK = 1 << 20  # positions found at a time: the swaps need no index array of the segment's size


def _pairs(left_head: np.ndarray, right_tail: np.ndarray, offset: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The swapped pairs, a chunk at a time: ``(left positions increasing, right positions
    decreasing)`` of equal lengths, in pair order. Every left stop of ``left_head`` and every
    right stop of ``right_tail`` (which starts at ``offset``) is paired; they are as many.
    Integer positions, since numpy's boolean indexing is several times slower."""
    lefts, rights = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    next_left, right_end = 0, right_tail.size
    while True:
        while lefts.size < _PAIR_CHUNK and next_left < left_head.size:
            stop = min(next_left + _PAIR_CHUNK, left_head.size)
            found = np.flatnonzero(left_head[next_left:stop])
            found += next_left
            lefts = np.concatenate((lefts, found)) if lefts.size else found
            next_left = stop
        while rights.size < _PAIR_CHUNK and right_end > 0:
            start = max(right_end - _PAIR_CHUNK, 0)
            found = np.flatnonzero(right_tail[start:right_end])[::-1]
            found += offset + start
            rights = np.concatenate((rights, found)) if rights.size else found
            right_end = start
        count = min(lefts.size, rights.size)
        if count == 0:
            return
        yield lefts[:count], rights[:count]
        lefts, rights = lefts[count:], rights[count:]


def first_k_mask(values: np.ndarray, k: int) -> np.ndarray | None:
    """The entries ``torch.sort(values, descending=True, stable=False).indices[:k]`` names.

    Args:
        values: ``(n,)`` float32 or float64, without NaN; **scrambled** by the call (the
            partitions happen in place).
        k: how many entries are kept.

    Returns:
        ``(n,)`` bool, True at the kept entries; None when the emulation does not apply (the
        sort would have fallen back to heap sort: more than ``2 log2 n`` partitions).
    """
    n = values.size
    if k <= 0 or k >= n:
        return np.full(n, k > 0)
    mask = np.zeros(n, dtype=bool)
    idx = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)  # (n,) original index of each entry
    vals, lo, depth = values, 0, _depth_limit(n)
    while vals.size > _THRESHOLD:
        if depth == 0:
            return None
        depth -= 1
        cut = _partition(vals, idx, k - lo)
        if cut is None:
            return None
        if k - lo < cut:
            vals, idx = vals[:cut], idx[:cut]
            continue
        mask[idx[:cut]] = True  # everything left of the cut comes before position k
        if k - lo == cut:
            return mask
        vals, idx, lo = vals[cut:], idx[cut:], lo + cut
    # the insertion sort: a stable sort of the last segment, descending
    order = np.argsort(-vals, kind="stable")
    mask[idx[order[: k - lo]]] = True
    return mask


@functools.lru_cache(maxsize=None)
def emulation_matches() -> bool:
    """Whether this torch's sort keeps the entries :func:`first_k_mask` says, on arrays of
    100,003 entries with ~300 ties per value (a few milliseconds, once per process)."""
    import torch

    rng = np.random.default_rng(12)
    for levels, k in ((317, 50_001), (5, 31_337)):
        values = rng.integers(0, levels, 100_003).astype(np.float32)
        order = torch.sort(torch.from_numpy(values.copy()), descending=True, stable=False).indices
        expected = np.zeros(values.size, dtype=bool)
        expected[order[:k].numpy()] = True
        got = first_k_mask(values.copy(), k)
        if got is None or not np.array_equal(got, expected):
            return False
    return True
