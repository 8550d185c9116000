"""Derived objects: an object stored as the deterministic computation that produces it (spec).

A release that merges a few rank-8 LoRA adapters into a base changes every targeted tensor, but
what it adds is the adapters: ``W' = W + sum_i c_i B_i A_i``. A derived object stores that
sentence instead of ``W'``'s bytes.

**Naming and storing.** A derived object is an object like any other: its key is
:func:`~modelgit.store.ids.object_id` of the bytes it produces (dtype, shape, content), so
manifests, dedup and every reader that only asks for ids do not know it is derived. Its file is
the usual object file (:mod:`.objectfile`) with encoding ``derived`` (code 16, depth 0, no delta
parent); the payload is the recipe, canonical JSON (sorted keys, ``,``/``:`` separators, ASCII,
floats as ``float.hex()`` strings so that they are exact)::

    {"fn":"lora_merge/1","inputs":[{"dtype":"F32","id":"<64 hex>","shape":[576,576]},...],
     "params":{...},"v":1}

* ``fn`` names a function of this module's registry, with its version (``lora_merge/1``). A
  function never changes once released: a different computation is a new version. A recipe never
  names code outside modelgit's registry (no import paths, nothing from the object store).
* ``inputs`` are stored objects by id, each with the dtype and shape it must have. An input may
  be derived itself (the base of a release is the previous release's derived weights), at most
  8 deep: a deeper chain, or a loop of recipes (which only a forged store can hold), fails.
* ``params`` are the function's parameters, checked by the function before anything is read.

**Reading** (:meth:`~modelgit.store.store.Store.get`) reads the inputs (each verified against its
id, as every read), runs the function and checks the result against the object's id. A missing
input raises :class:`~modelgit.errors.ObjectMissingError` naming the input (so the usual repair
fetches it); a result that does not hash to the id is a :class:`~modelgit.errors.CorruptObjectError`
(tampered recipe, or a machine that computes differently): no wrong bytes are ever returned. The
result is cached under ``cache/derived/<id>`` in the store (written atomically, verified on every
read like an object, deleted by ``gc`` or ``modelgit gc --drop-cache``): a second checkout decodes
nothing.

**Unknown functions.** A recipe naming a function this modelgit does not know raises
:class:`~modelgit.errors.DerivedFunctionError` ("upgrade modelgit"); the object is not treated as
damaged (nothing is quarantined). A modelgit older than derived objects does not know encoding 16:
it would call the object corrupt. To keep it from reading (and quarantining) such objects, a store
that holds a derived object has format 3 (:data:`DERIVED_FORMAT`) in ``modelgit-store.json``,
which every older modelgit refuses with "upgrade modelgit" when it opens the store. A store
without derived objects keeps its format: old readers keep working on it.

**Writing** (:meth:`~modelgit.store.store.Store.put_derived`): the writer computes the bytes from
the stored inputs (read back from the store, verified) and compares them with the bytes it
expects (the merge it just evaluated); only when they are equal is the recipe stored. When not
(a computation that does not reproduce), the caller stores the bytes as usual (a delta on the
base): a derived object is never written on hope.

**Determinism.** The functions use no BLAS, no threads and no reduction whose order numpy may
choose: a LoRA product ``B A`` is the sum over the rank of outer products, in rank order, in
float64 (each elementwise multiply and add is one IEEE-754 operation, correctly rounded, whatever
the SIMD width); terms are added in recipe order; the result is rounded once to the output dtype
(round to nearest even; bf16 by the same rule on the float32 rounding, as torch does).

**Transfers** move a derived object as its stored bytes (the recipe) and add its inputs to what
moves when the other side lacks them; the computed bytes never travel. The destination verifies
the object by computing it from the inputs (its own, else the source's, each verified). **gc**
keeps the inputs of every derived object it keeps.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from math import prod
from typing import Callable

from ..dtypes import DTYPES
from ..errors import DerivedFunctionError
from .encodings import Encoding, register
from .ids import is_object_id

__all__ = ["DERIVED", "DERIVED_FORMAT", "InputRef", "Recipe", "DerivedFunction", "FUNCTIONS",
           "register_function", "parse_recipe", "recipe_input_ids", "compute", "MAX_RECIPE_BYTES", "MAX_INPUTS",
           "round_to"]

#: the store format of a store that holds derived objects (older modelgit refuses it)
DERIVED_FORMAT = 3
MAX_RECIPE_BYTES = 1 << 20  # a recipe is parameters and ids: a megabyte is far more than enough
MAX_INPUTS = 1024
_FN_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}/[1-9][0-9]{0,5}$")


def _no_decode(payload, itemsize, raw_len, parent=None):
    # a recipe is not decoded by the encoding layer: the store computes it (see Store._load)
    raise ValueError("a derived object is computed from its inputs, not decoded on its own")


def _no_encode(raw, itemsize, parent=None):
    raise ValueError("a derived object is written with Store.put_derived")


# code 16: far from the codes of the standalone and delta encodings, which may grow
DERIVED = register(Encoding("derived", 16, _no_encode, _no_decode))


@dataclass(frozen=True)
class InputRef:
    """An input of a computation: a stored object of a given dtype and shape."""
    oid: str
    dtype: str
    shape: tuple[int, ...]

    def as_json(self) -> dict:
        return {"dtype": self.dtype, "id": self.oid, "shape": list(self.shape)}


@dataclass(frozen=True)
class Recipe:
    """What a derived object is: ``fn(inputs, params)`` giving ``dtype`` ``shape`` bytes."""
    fn: str
    inputs: tuple[InputRef, ...]
    params: dict

    def to_bytes(self) -> bytes:
        """The canonical payload (equal recipes give equal bytes)."""
        body = {"fn": self.fn, "inputs": [i.as_json() for i in self.inputs],
                "params": self.params, "v": 1}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False).encode("ascii")


@dataclass(frozen=True)
class DerivedFunction:
    """A registered computation. ``check(params, inputs, dtype, shape)`` raises ValueError on a
    recipe it cannot run; ``run(arrays, params, dtype, shape)`` returns the output's bytes
    (``arrays``: the inputs as read-only numpy arrays of their dtype and shape; bf16 as uint16)."""
    name: str
    check: Callable[[dict, tuple[InputRef, ...], str, tuple[int, ...]], None]
    run: Callable[[list, dict, str, tuple[int, ...]], bytes]
    doc: str = ""


FUNCTIONS: dict[str, DerivedFunction] = {}


def register_function(fn: DerivedFunction) -> DerivedFunction:
    """Add ``fn`` to the registry. A duplicate or malformed name raises ValueError."""
    if not _FN_RE.match(fn.name) or fn.name in FUNCTIONS:
        raise ValueError(f"derived function {fn.name!r} is malformed or already registered")
    FUNCTIONS[fn.name] = fn
    return fn


def parse_recipe(payload, dtype: str, shape: tuple[int, ...]) -> Recipe:
    """The recipe in ``payload`` (an object's payload), checked as a whole.

    Raises:
        ValueError: the payload is not a canonical, well-formed recipe for ``dtype`` ``shape``.
        DerivedFunctionError: it names a function this modelgit does not know.
    """
    data = bytes(payload)
    if len(data) > MAX_RECIPE_BYTES:
        raise ValueError(f"recipe of {len(data)} bytes, over the limit ({MAX_RECIPE_BYTES})")
    try:
        body = json.loads(data.decode("ascii"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"recipe is not JSON ({exc})") from None
    if not isinstance(body, dict) or set(body) != {"fn", "inputs", "params", "v"} or body["v"] != 1:
        raise ValueError("recipe must be an object with exactly fn, inputs, params and v=1")
    fn, inputs, params = body["fn"], body["inputs"], body["params"]
    if not isinstance(fn, str) or not _FN_RE.match(fn):
        raise ValueError(f"recipe names a malformed function {fn!r}")
    if not isinstance(inputs, list) or not 0 < len(inputs) <= MAX_INPUTS or not isinstance(params, dict):
        raise ValueError(f"recipe needs 1 to {MAX_INPUTS} inputs and a params object")
    refs = tuple(_input_ref(i) for i in inputs)
    recipe = Recipe(fn, refs, params)
    if recipe.to_bytes() != data:
        raise ValueError("recipe is not in canonical form")
    function = FUNCTIONS.get(fn)
    if function is None:
        known = ", ".join(sorted(FUNCTIONS)) or "none"
        raise DerivedFunctionError(
            f"this object is computed by function {fn!r}, which this modelgit does not know "
            f"(it knows {known}); upgrade modelgit (`pip install -U modelgit`) to read it", fn)
    if dtype not in DTYPES:
        raise ValueError(f"unknown output dtype {dtype!r}")
    function.check(params, refs, dtype, shape)
    return recipe


def recipe_input_ids(payload) -> list[str]:
    """The input ids a recipe names, read without knowing its function (gc and transfers keep
    and move the inputs of functions this modelgit does not know too).

    Raises:
        ValueError: the payload is not a recipe.
    """
    data = bytes(payload)
    if len(data) > MAX_RECIPE_BYTES:
        raise ValueError(f"recipe of {len(data)} bytes, over the limit ({MAX_RECIPE_BYTES})")
    try:
        body = json.loads(data.decode("ascii"), parse_constant=_refuse_constant)
        inputs = body["inputs"]
        if not isinstance(inputs, list) or len(inputs) > MAX_INPUTS:
            raise ValueError("inputs is not a list of at most {MAX_INPUTS}")
        return [_input_ref(item).oid for item in inputs]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"recipe is malformed ({exc!r})") from None


def _refuse_constant(name: str):
    raise ValueError(f"recipe holds {name}")


def _input_ref(item) -> InputRef:
    if not isinstance(item, dict) or set(item) != {"dtype", "id", "shape"}:
        raise ValueError("a recipe input must be {dtype, id, shape}")
    oid, dtype, shape = item["id"], item["dtype"], item["shape"]
    if not isinstance(oid, str) or not is_object_id(oid):
        raise ValueError(f"recipe input id {oid!r} is not an object id")
    if dtype not in DTYPES or not isinstance(shape, list) or len(shape) > 8 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape):
        raise ValueError(f"recipe input {oid} has a malformed dtype or shape")
    if prod(shape) * DTYPES[dtype].itemsize > 1 << 32:
        raise ValueError(f"recipe input {oid} is larger than any object")
    return InputRef(oid, dtype, tuple(shape))


def compute(recipe: Recipe, dtype: str, shape: tuple[int, ...], read: Callable[[InputRef], object]) -> bytes:
    """Run ``recipe`` on the inputs ``read`` gives (bytes-like content, verified by the caller).

    Raises:
        ValueError: an input does not have the dtype and shape the recipe says.
        DerivedFunctionError: the function is unknown.
    """
    import numpy as np

    function = FUNCTIONS.get(recipe.fn)
    if function is None:
        raise DerivedFunctionError(f"unknown derived function {recipe.fn!r}; upgrade modelgit",
                                   recipe.fn)
    arrays = []
    for ref in recipe.inputs:
        content = read(ref)
        expected = prod(ref.shape) * DTYPES[ref.dtype].itemsize
        if memoryview(content).nbytes != expected:
            raise ValueError(f"input {ref.oid} has {memoryview(content).nbytes} bytes, not the "
                             f"{expected} of {ref.dtype} {list(ref.shape)}")
        arrays.append(np.frombuffer(content, dtype=numpy_dtype(ref.dtype)).reshape(ref.shape))
    return function.run(arrays, recipe.params, dtype, shape)


# ---------------------------------------------------------------- exact numbers
def numpy_dtype(dtype: str):
    """The numpy dtype holding ``dtype``'s bytes (bf16 as little-endian uint16)."""
    import numpy as np

    if dtype == "BF16":
        return np.dtype("<u2")
    numpy_name = DTYPES[dtype].numpy_name
    if numpy_name is None:
        raise ValueError(f"dtype {dtype} cannot be computed on")
    return np.dtype(numpy_name)


def to_float64(array, dtype: str):
    """``array`` (as :func:`numpy_dtype` holds ``dtype``) as float64 (exact for every float)."""
    import numpy as np

    if dtype == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return array.astype(np.float64)


def round_to(values, dtype: str) -> bytes:
    """float64 ``values`` rounded (to nearest, ties to even) to ``dtype``, as little-endian bytes.
    bf16 rounds the float32 rounding (as torch's float64 -> bfloat16 does); NaN stays NaN."""
    import numpy as np

    if dtype == "F64":
        return values.astype("<f8").tobytes()
    if dtype == "F32":
        return values.astype("<f4").tobytes()
    if dtype == "F16":
        return values.astype("<f2").tobytes()
    if dtype == "BF16":
        bits = values.astype("<f4").view(np.uint32)
        nan = (bits & 0x7FFFFFFF) > 0x7F800000
        rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16
        rounded = np.where(nan, (bits >> 16) | 0x40, rounded)
        return rounded.astype("<u2").tobytes()
    raise ValueError(f"cannot round to {dtype}")


def hex_float(value) -> str:
    """A float parameter as a recipe holds it: exact and canonical."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"parameter {value} is not finite")
    return value.hex()


def read_float(text, what: str) -> float:
    """Inverse of :func:`hex_float`. Raises ValueError on anything else."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a float in hex form")
    try:
        value = float.fromhex(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a float in hex form") from None
    if not math.isfinite(value) or value.hex() != text:
        raise ValueError(f"{what} {text!r} is not canonical")
    return value


from . import _functions  # noqa: E402,F401  # pyflakes: ignore (registers the functions)
