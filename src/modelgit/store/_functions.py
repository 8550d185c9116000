"""The registered derived functions (see :mod:`.derived` for the rules every one follows).

``lora_merge/1`` — rows ``[r0, r1)`` of ``W + sum_i c_i B_i A_i``: a base weight plus LoRA
products, which is what a linear or task-arithmetic merge of LoRA adapters into their base gives
(``c_i`` folds the adapter's ``alpha/r`` scale, its weight, ``lambda`` and a linear merge's
normalisation). Inputs: ``inputs[0]`` the base chunk (its shape is the output's, 2-D, rows
``r0..r1`` of the whole weight), then the factors the terms name: ``A`` (rank, columns) and ``B``
(rows of the whole weight, rank). Params::

    {"rows":[r0,r1],"terms":[{"a":1,"b":2,"c":"0x1.0p-1"},...]}

``ties_lora/1`` — rows ``[r0, r1)`` of a TIES merge (Yadav et al. 2023,
https://arxiv.org/abs/2306.01708) of LoRA task vectors ``d_i = c_i B_i A_i`` into the base, as
``modelgit.merge``'s ``ties`` defines it: each ``d_i`` keeps its entries with ``|d_i| >= t_i``
(``t_i``: the k-th largest magnitude over the whole tensor, ``k = max(1, int(density * size))``,
computed by the writer with the same products and recorded, so that every chunk is computed
from its own rows alone; an entry tied with the threshold is kept), weighted, ``w_i d_i``; the
sign of their sum is elected per entry (0 counts as +); entries of the other sign and zeros
drop out; ``merged = sum_i w_i d_i [agrees]``, divided by ``sum_i w_i [agrees]`` (1 where that is
0) when ``normalize``; the result is ``W + lambda merged``. Params::

    {"lambda":"0x1.0p+0","normalize":true,"rows":[r0,r1],
     "terms":[{"a":1,"b":2,"c":"0x1.0p-1","t":"0x1.2p-9","w":"0x1.0p+0"},...]}

``chunk_mix/1`` — ``sum_k c_k x_k`` of whole stored chunks of the output's dtype and shape (what
the git merge driver's ``average`` and ``task_arithmetic`` strategies give: ``(a + b) / 2``,
``o + lambda w ((a - o) + (b - o))``), summed in float64 in input order, rounded once. Params::

    {"c":["0x1.0p-1","0x1.0p-1"]}

``dare_lora/1`` is in :mod:`._dare`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .derived import (DerivedFunction, InputRef, numpy_dtype, read_float, register_function,
                      round_to, to_float64)

if TYPE_CHECKING:
    from .derived import Recipe

_FLOATS = ("F16", "BF16", "F32", "F64")
MAX_TERMS = 256


def _check_lora_merge(params: dict, inputs: tuple[InputRef, ...], dtype: str,
                      shape: tuple[int, ...]) -> None:
    if set(params) != {"rows", "terms"}:
        raise ValueError("lora_merge/1 takes exactly the params rows and terms")
    rows, terms = params["rows"], params["terms"]
    if not (isinstance(rows, list) and len(rows) == 2 and all(type(r) is int for r in rows)
            and 0 <= rows[0] < rows[1]):
        raise ValueError(f"lora_merge/1: rows {rows!r} is not [start, stop] with start < stop")
    base = inputs[0]
    if dtype not in _FLOATS or base.dtype != dtype or len(shape) != 2 or base.shape != shape \
            or shape[0] != rows[1] - rows[0]:
        raise ValueError(f"lora_merge/1: the base input ({base.dtype} {list(base.shape)}) and "
                         f"the output ({dtype} {list(shape)}, rows {rows}) do not agree")
    if not isinstance(terms, list) or not 0 < len(terms) <= MAX_TERMS:
        raise ValueError(f"lora_merge/1 needs 1 to {MAX_TERMS} terms")
    used = {0}
    for term in terms:
        if not isinstance(term, dict) or set(term) != {"a", "b", "c"}:
            raise ValueError("a lora_merge/1 term is {a, b, c}")
        a, b = term["a"], term["b"]
        if not all(type(i) is int and 0 < i < len(inputs) for i in (a, b)):
            raise ValueError(f"lora_merge/1: term inputs {a!r}, {b!r} out of range")
        read_float(term["c"], "lora_merge/1 coefficient")
        A, B = inputs[a], inputs[b]
        if len(A.shape) != 2 or len(B.shape) != 2 or A.dtype not in _FLOATS \
                or B.dtype not in _FLOATS or A.shape[1] != shape[1] or B.shape[1] != A.shape[0] \
                or B.shape[0] < rows[1] or A.shape[0] > 4096:
            raise ValueError(f"lora_merge/1: factors A {list(A.shape)} and B {list(B.shape)} do "
                             f"not fit rows {rows} of a weight with {shape[1]} columns")
        used |= {a, b}
    if used != set(range(len(inputs))):
        raise ValueError("lora_merge/1: every input must be used by a term")


def lora_product(a, b, coefficient: float, out=None):
    """``coefficient * (B A)`` in float64, summed over the rank in order (no BLAS: the bits do
    not depend on the machine). ``a``: (rank, columns), ``b``: (rows, rank), any float dtype
    as :func:`~.derived.numpy_dtype` holds it."""
    import numpy as np

    a = to_float64(a, _dtype_of(a))
    b = to_float64(b, _dtype_of(b))
    shape = (b.shape[0], a.shape[1])
    product = np.zeros(shape, dtype=np.float64) if out is None else out
    if out is not None:
        product.fill(0.0)
    outer = np.empty(shape, dtype=np.float64)
    for k in range(a.shape[0]):  # rank order, one correctly rounded op per element each
        np.multiply(b[:, k:k + 1], a[k:k + 1, :], out=outer)
        np.add(product, outer, out=product)
    np.multiply(product, coefficient, out=product)
    return product


def _run_lora_merge(arrays: list, params: dict, dtype: str, shape: tuple[int, ...]) -> bytes:
    import numpy as np

    r0, r1 = params["rows"]
    acc = to_float64(arrays[0], dtype)  # (rows, columns), a fresh array
    product = np.empty(shape, dtype=np.float64)
    for term in params["terms"]:
        lora_product(arrays[term["a"]], arrays[term["b"]][r0:r1],
                     read_float(term["c"], "coefficient"), out=product)
        np.add(acc, product, out=acc)
    return round_to(acc, dtype)


def _dtype_of(array) -> str:
    # the factor's dtype as recorded (bf16 is held as uint16, see numpy_dtype)
    return "BF16" if array.dtype == numpy_dtype("BF16") else {2: "F16", 4: "F32", 8: "F64"}[array.dtype.itemsize]


LORA_MERGE = register_function(DerivedFunction(
    "lora_merge/1", _check_lora_merge, _run_lora_merge,
    "rows of W + sum_i c_i B_i A_i, float64, rank order, rounded once"))


def lora_merge_recipe(base: InputRef, rows: tuple[int, int],
                      terms: list[tuple[InputRef, InputRef, float]]) -> "Recipe":
    """The ``lora_merge/1`` recipe of rows ``rows`` of ``base + sum c B A`` (terms
    ``(A, B, c)`` in the order they are added; a factor named twice is one input)."""
    from .derived import Recipe, hex_float

    inputs: list[InputRef] = [base]
    index: dict[InputRef, int] = {}

    def position(ref: InputRef) -> int:
        if ref not in index:
            index[ref] = len(inputs)
            inputs.append(ref)
        return index[ref]

    out = [{"a": position(a), "b": position(b), "c": hex_float(c)} for a, b, c in terms]
    return Recipe("lora_merge/1", tuple(inputs), {"rows": [int(rows[0]), int(rows[1])], "terms": out})


def _check_ties_lora(params: dict, inputs: tuple[InputRef, ...], dtype: str,
                     shape: tuple[int, ...]) -> None:
    if set(params) != {"rows", "terms", "lambda", "normalize"} or type(params["normalize"]) is not bool:
        raise ValueError("ties_lora/1 takes exactly the params lambda, normalize, rows and terms")
    read_float(params["lambda"], "ties_lora/1 lambda")
    terms = params["terms"]
    if not isinstance(terms, list) or not all(isinstance(t, dict) and set(t) == {"a", "b", "c", "t", "w"}
                                              for t in terms):
        raise ValueError("a ties_lora/1 term is {a, b, c, t, w}")
    for term in terms:
        if read_float(term["t"], "ties_lora/1 threshold") < 0:
            raise ValueError("a ties_lora/1 threshold is a magnitude (>= 0)")
        read_float(term["w"], "ties_lora/1 weight")
    _check_lora_merge({"rows": params["rows"], "terms": [
        {k: t[k] for k in ("a", "b", "c")} for t in terms]}, inputs, dtype, shape)


def _run_ties_lora(arrays: list, params: dict, dtype: str, shape: tuple[int, ...]) -> bytes:
    import numpy as np

    r0, r1 = params["rows"]
    total = np.zeros(shape, dtype=np.float64)
    weighted = []
    for term in params["terms"]:
        d = lora_product(arrays[term["a"]], arrays[term["b"]][r0:r1], read_float(term["c"], "c"))
        d[np.abs(d) < read_float(term["t"], "t")] = 0.0  # trim: the top-k of the whole tensor
        np.multiply(d, read_float(term["w"], "w"), out=d)
        np.add(total, d, out=total)
        weighted.append(d)
    merged = sign_consensus(total, weighted, [read_float(t["w"], "w") for t in params["terms"]],
                            params["normalize"])
    np.multiply(merged, read_float(params["lambda"], "lambda"), out=merged)
    return round_to(np.add(to_float64(arrays[0], dtype), merged), dtype)


def sign_consensus(total, weighted: list, weights: list[float], normalize: bool):
    """TIES's consensus of weighted task vectors ``weighted`` (float64, summing to ``total``):
    the entries that agree with the elected sign (that of ``total``, 0 counting as +; zeros
    never agree), summed in order, divided by the agreeing weights (1 where none) when
    ``normalize``."""
    import numpy as np

    positive = total >= 0  # the elected sign; 0 counts as +
    merged = np.zeros(total.shape, dtype=np.float64)
    divisor = np.zeros(total.shape, dtype=np.float64)
    for weight, d in zip(weights, weighted):
        agrees = np.where(positive, d > 0, d < 0)  # zeros never count
        np.add(merged, np.where(agrees, d, 0.0), out=merged)
        np.add(divisor, np.where(agrees, weight, 0.0), out=divisor)
    if normalize:
        divisor[divisor == 0.0] = 1.0
        np.divide(merged, divisor, out=merged)
    return merged


TIES_LORA = register_function(DerivedFunction(
    "ties_lora/1", _check_ties_lora, _run_ties_lora,
    "rows of a TIES merge of LoRA task vectors with recorded trim thresholds"))


def ties_threshold(magnitudes, density: float) -> float:
    """The k-th largest of ``magnitudes`` (float64, the whole tensor), ``k = max(1, int(density
    * size))``: an exact value, whatever the selection algorithm."""
    import numpy as np

    flat = magnitudes.reshape(-1)
    k = max(1, min(flat.size, int(density * flat.size)))
    return float(np.partition(flat, flat.size - k)[flat.size - k])


def ties_lora_recipe(base: InputRef, rows: tuple[int, int],
                     terms: list[tuple[InputRef, InputRef, float, float, float]],
                     lam: float, normalize: bool) -> "Recipe":
    """The ``ties_lora/1`` recipe; terms ``(A, B, c, weight, threshold)`` in order."""
    from .derived import Recipe, hex_float

    plain = lora_merge_recipe(base, rows, [(a, b, c) for a, b, c, _w, _t in terms])
    out = [dict(term, w=hex_float(w), t=hex_float(t))
           for term, (_a, _b, _c, w, t) in zip(plain.params["terms"], terms)]
    return Recipe("ties_lora/1", plain.inputs,
                  {"lambda": hex_float(lam), "normalize": bool(normalize), "rows": plain.params["rows"],
                   "terms": out})


def _check_chunk_mix(params: dict, inputs: tuple[InputRef, ...], dtype: str,
                     shape: tuple[int, ...]) -> None:
    if set(params) != {"c"} or not isinstance(params["c"], list) or len(params["c"]) != len(inputs) \
            or not 0 < len(inputs) <= MAX_TERMS:
        raise ValueError("chunk_mix/1 takes exactly the param c, one coefficient per input")
    for c in params["c"]:
        read_float(c, "chunk_mix/1 coefficient")
    if dtype not in _FLOATS or any(i.dtype != dtype or i.shape != tuple(shape) for i in inputs):
        raise ValueError(f"chunk_mix/1: every input must be {dtype} {list(shape)} like the output")


def _run_chunk_mix(arrays: list, params: dict, dtype: str, shape: tuple[int, ...]) -> bytes:
    import numpy as np

    acc = np.zeros(shape, dtype=np.float64)
    for array, c in zip(arrays, params["c"]):  # recipe order, one rounding per operation
        np.add(acc, np.multiply(to_float64(array, dtype), read_float(c, "c")), out=acc)
    return round_to(acc, dtype)


CHUNK_MIX = register_function(DerivedFunction(
    "chunk_mix/1", _check_chunk_mix, _run_chunk_mix,
    "sum_k c_k x_k of whole stored chunks, float64, in order, rounded once"))


def chunk_mix_recipe(inputs: list[InputRef], coefficients: list[float]) -> "Recipe":
    """The ``chunk_mix/1`` recipe of ``sum_k c_k x_k`` (inputs in the order they are added)."""
    from .derived import Recipe, hex_float

    return Recipe("chunk_mix/1", tuple(inputs), {"c": [hex_float(c) for c in coefficients]})


from . import _dare  # noqa: E402,F401  # registers dare_lora/1 (it builds on the functions above)
