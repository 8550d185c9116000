"""``dare_lora/1``: DARE over LoRA task vectors, with a drop mask modelgit owns (a derived
function; see :mod:`.derived` for the rules every one follows).

Rows ``[r0, r1)`` of a DARE merge (Yu et al. 2023, https://arxiv.org/abs/2311.03099) of LoRA
task vectors ``d_i = c_i B_i A_i`` into the base, as ``modelgit.merge``'s ``dare_linear`` and
``dare_ties`` define it: each ``d_i`` keeps each entry with probability ``p_i`` (the density),
divided by ``p_i`` when ``rescale``, then weighted, ``w_i d_i``; with consensus ``none`` they are
summed in order, with consensus ``sum`` TIES's sign election applies (see ``ties_lora/1``:
entries of the other sign and zeros drop out, divided by the agreeing weights when
``normalize``); the result is ``W + lambda merged``. Params::

    {"consensus":"none","lambda":"0x1.0p+0","normalize":false,"rescale":true,"rows":[r0,r1],
     "terms":[{"a":1,"b":2,"c":"0x1.0p-1","d":"0x1.0p-1","s":1234,"w":"0x1.0p+0"},...]}

**The drop mask** is not drawn from any library's generator (whose streams may change between
versions) but computed: entry ``j`` of the whole tensor (row-major, ``j = row * columns +
column``) is kept by term ``i`` iff::

    (mix(s_i + (j + 1) * 0x9E3779B97F4A7C15 mod 2**64) >> 11) < floor(p_i * 2**53)

with ``mix`` the SplitMix64 finaliser (Steele, Lea, Flood 2014: ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31``, all mod 2**64). ``s_i`` (``0 <= s < 2**64``,
recorded in the recipe) is the writer's choice; a release derives it from the merge recipe's
``seed``, the tensor's name and the adapter's position (:func:`dare_seed`). Integer operations
only, so the mask is the same on every machine, and each entry's draw depends on its index alone,
so every chunk computes its own rows' mask. ``p_i = 0`` keeps nothing, ``p_i = 1`` everything.
"""

from __future__ import annotations

import hashlib

from .derived import (DerivedFunction, InputRef, Recipe, hex_float, read_float, register_function,
                      round_to, to_float64)
from ._functions import _check_lora_merge, lora_merge_recipe, lora_product, sign_consensus

__all__ = ["DARE_LORA", "dare_keep", "dare_seed", "dare_lora_recipe"]

_GAMMA = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_CONSENSUS = ("none", "sum")


def dare_keep(seed: int, first: int, count: int, density: float):
    """Which of the entries ``first .. first + count - 1`` of a tensor's flat index DARE's term
    of seed ``seed`` keeps at ``density``: ``(count,)`` bool (the module docstring's rule)."""
    import numpy as np

    u64 = np.uint64
    z = np.arange(first + 1, first + 1 + count, dtype=u64)  # (count,) j + 1
    np.multiply(z, u64(_GAMMA), out=z)  # uint64 arithmetic wraps: mod 2**64
    np.add(z, u64(seed), out=z)
    np.bitwise_xor(z, z >> u64(30), out=z)
    np.multiply(z, u64(_MIX1), out=z)
    np.bitwise_xor(z, z >> u64(27), out=z)
    np.multiply(z, u64(_MIX2), out=z)
    np.bitwise_xor(z, z >> u64(31), out=z)
    return (z >> u64(11)) < u64(int(density * 2.0 ** 53))  # density * 2**53 is exact


def dare_seed(seed: int, tensor: str, index: int) -> int:
    """The mask seed of adapter ``index`` on ``tensor`` in a merge of seed ``seed``: each
    tensor and adapter draws apart, and the same merge draws the same."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{tensor}\x00{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _check_dare_lora(params: dict, inputs: tuple[InputRef, ...], dtype: str,
                     shape: tuple[int, ...]) -> None:
    if set(params) != {"consensus", "lambda", "normalize", "rescale", "rows", "terms"}:
        raise ValueError("dare_lora/1 takes exactly the params consensus, lambda, normalize, "
                         "rescale, rows and terms")
    if params["consensus"] not in _CONSENSUS or type(params["normalize"]) is not bool \
            or type(params["rescale"]) is not bool:
        raise ValueError(f"dare_lora/1: consensus must be one of {_CONSENSUS}, normalize and "
                         "rescale booleans")
    if params["consensus"] == "none" and params["normalize"]:
        raise ValueError("dare_lora/1: without consensus the divisor is folded into lambda "
                         "(normalize must be false)")
    read_float(params["lambda"], "dare_lora/1 lambda")
    terms = params["terms"]
    if not isinstance(terms, list) or not all(
            isinstance(t, dict) and set(t) == {"a", "b", "c", "d", "s", "w"} for t in terms):
        raise ValueError("a dare_lora/1 term is {a, b, c, d, s, w}")
    for term in terms:
        if not 0.0 <= read_float(term["d"], "dare_lora/1 density") <= 1.0:
            raise ValueError("a dare_lora/1 density lies in [0, 1]")
        seed = term["s"]
        if type(seed) is not int or not 0 <= seed < 2 ** 64:
            raise ValueError(f"a dare_lora/1 seed is an integer in [0, 2**64), not {seed!r}")
        read_float(term["w"], "dare_lora/1 weight")
    _check_lora_merge({"rows": params["rows"], "terms": [
        {k: t[k] for k in ("a", "b", "c")} for t in terms]}, inputs, dtype, shape)


def _run_dare_lora(arrays: list, params: dict, dtype: str, shape: tuple[int, ...]) -> bytes:
    import numpy as np

    r0, r1 = params["rows"]
    total = np.zeros(shape, dtype=np.float64)  # (rows, columns)
    weighted, weights = [], []
    for term in params["terms"]:
        density, weight = read_float(term["d"], "d"), read_float(term["w"], "w")
        d = lora_product(arrays[term["a"]], arrays[term["b"]][r0:r1], read_float(term["c"], "c"))
        keep = dare_keep(term["s"], r0 * shape[1], d.size, density).reshape(shape)
        d[~keep] = 0.0  # dropped entries are +0
        if params["rescale"] and density > 0.0:
            np.divide(d, density, out=d)
        np.multiply(d, weight, out=d)
        np.add(total, d, out=total)
        if params["consensus"] == "sum":
            weighted.append(d)
            weights.append(weight)
    merged = total if params["consensus"] == "none" else \
        sign_consensus(total, weighted, weights, params["normalize"])
    np.multiply(merged, read_float(params["lambda"], "lambda"), out=merged)
    return round_to(np.add(to_float64(arrays[0], dtype), merged), dtype)


DARE_LORA = register_function(DerivedFunction(
    "dare_lora/1", _check_dare_lora, _run_dare_lora,
    "rows of a DARE merge of LoRA task vectors, mask from SplitMix64 of recorded seeds"))


def dare_lora_recipe(base: InputRef, rows: tuple[int, int],
                     terms: list[tuple[InputRef, InputRef, float, float, float, int]],
                     lam: float, consensus: str, normalize: bool, rescale: bool) -> Recipe:
    """The ``dare_lora/1`` recipe; terms ``(A, B, c, weight, density, seed)`` in order."""
    plain = lora_merge_recipe(base, rows, [(a, b, c) for a, b, c, *_rest in terms])
    out = [dict(term, w=hex_float(w), d=hex_float(p), s=int(s))
           for term, (_a, _b, _c, w, p, s) in zip(plain.params["terms"], terms)]
    return Recipe("dare_lora/1", plain.inputs,
                  {"consensus": consensus, "lambda": hex_float(lam), "normalize": bool(normalize),
                   "rescale": bool(rescale), "rows": plain.params["rows"], "terms": out})
