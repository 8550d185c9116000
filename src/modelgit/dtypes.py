"""The tensor element types modelgit knows, named as safetensors names them.

Every layer speaks these names (``"F32"``, ``"BF16"``...). A dtype is only a name and an item
size here: modelgit moves and hashes raw little-endian bytes and needs numpy or torch types only
at the edges (formats) and for bit-pattern arithmetic (delta encoding).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DType", "DTYPES", "dtype_info", "FLOAT_DTYPES"]


@dataclass(frozen=True)
class DType:
    name: str  # safetensors name, e.g. "BF16"
    itemsize: int  # bytes per element
    torch_name: str | None  # attribute of the torch module, when torch has it
    numpy_name: str | None  # numpy dtype string, when numpy has it natively


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("BOOL", 1, "bool", "bool"),
        DType("U8", 1, "uint8", "<u1"),
        DType("I8", 1, "int8", "<i1"),
        DType("F8_E4M3", 1, "float8_e4m3fn", None),
        DType("F8_E5M2", 1, "float8_e5m2", None),
        DType("I16", 2, "int16", "<i2"),
        DType("U16", 2, "uint16", "<u2"),
        DType("F16", 2, "float16", "<f2"),
        DType("BF16", 2, "bfloat16", None),
        DType("I32", 4, "int32", "<i4"),
        DType("U32", 4, "uint32", "<u4"),
        DType("F32", 4, "float32", "<f4"),
        DType("I64", 8, "int64", "<i8"),
        DType("U64", 8, "uint64", "<u8"),
        DType("F64", 8, "float64", "<f8"),
        DType("C64", 8, "complex64", "<c8"),
    )
}

# Types whose byte planes differ in entropy (sign/exponent vs mantissa): byte-plane split pays.
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "C64"})


def dtype_info(name: str) -> DType:
    """Return the :class:`DType` called ``name``.

    Raises:
        KeyError: for a name modelgit does not know; callers turn it into a FormatError that
            names the file.
    """
    return DTYPES[name]
