"""What travels between the server and the clients, and how much of it.

A LoRA travels as a Flower ``ArrayRecord`` keyed as PEFT names its tensors
(``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``), so a client writes it
straight into an adapter directory. Arrays are serialised by Flower as ``.npy`` bytes and read
back with ``allow_pickle=False``; whatever a client sends is checked against the expected keys,
dtypes and shapes before a byte of it is decoded (:func:`decode_lora`).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["PREFIX", "lora_to_arrays", "arrays_to_lora", "decode_lora", "array_bytes", "lora_key",
           "split_lora_key"]

PREFIX = "base_model.model."
_DTYPES = ("float32", "float16")  # what a client may send; decoded to float32


def lora_key(module: str, kind: str) -> str:
    return f"{PREFIX}{module}.lora_{kind}.weight"


def split_lora_key(key: str) -> tuple[str, str] | None:
    """(module, "A" | "B") of a PEFT LoRA key, or None."""
    for kind in ("A", "B"):
        suffix = f".lora_{kind}.weight"
        if key.startswith(PREFIX) and key.endswith(suffix):
            return key[len(PREFIX):-len(suffix)], kind
    return None


def lora_to_arrays(lora: dict[str, dict[str, torch.Tensor]]):
    """A LoRA state as an ``ArrayRecord`` (float32, C-contiguous)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({lora_key(module, kind): Array(parts[kind].detach().float().contiguous()
                                                      .cpu().numpy())
                        for module, parts in sorted(lora.items()) for kind in ("A", "B")})


def arrays_to_lora(record) -> dict[str, dict[str, torch.Tensor]]:
    """A trusted ``ArrayRecord`` (the server's own) back into a LoRA state."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key in record.keys():
        module, kind = split_lora_key(key)
        out.setdefault(module, {})[kind] = torch.from_numpy(np.array(record[key].numpy(),
                                                                     dtype=np.float32))
    return out


def decode_lora(record, expected: dict[str, dict[str, tuple[int, ...]]],
                what: str = "LoRA") -> tuple[dict[str, dict[str, torch.Tensor]] | None, str | None]:
    """An untrusted ``ArrayRecord`` as a LoRA state of exactly the ``expected`` shapes.

    Args:
        record: the ArrayRecord a client sent.
        expected: {module: {"A": shape, "B": shape}}.
        what: how the reason names the record (``LoRA``, ``Fisher``).
    Returns:
        (state, None), or (None, reason) naming the first problem: missing or unexpected keys,
        a dtype, a shape, or a value that is NaN or infinite.
    """
    want = {lora_key(m, k): shape for m, parts in expected.items() for k, shape in parts.items()}
    keys = set(record.keys())
    if keys != set(want):
        missing, extra = sorted(set(want) - keys), sorted(keys - set(want))
        return None, (f"wrong keys in its {what}: missing {missing[:3]}, unexpected "
                      f"{[k[:80] for k in extra[:3]]}")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, shape in sorted(want.items()):
        array = record[key]
        if array.dtype not in _DTYPES:
            return None, f"{what} tensor {key} has dtype {array.dtype!r}, not one of {_DTYPES}"
        if tuple(array.shape) != tuple(shape):
            return None, (f"wrong shape in its {what}: {key} is {list(array.shape)}, the round's "
                          f"is {list(shape)}")
        try:
            values = array.numpy()
        except (ValueError, OSError, TypeError) as exc:  # bytes that are not the .npy declared
            return None, f"{what} tensor {key} cannot be decoded ({type(exc).__name__})"
        if tuple(values.shape) != tuple(shape) or values.dtype.name not in _DTYPES:
            return None, f"{what} tensor {key} holds {values.dtype.name} {list(values.shape)}, " \
                         f"not what its header declares"
        tensor = torch.from_numpy(np.array(values, dtype=np.float32))
        if not torch.isfinite(tensor).all():
            return None, f"NaN or infinite values in its {what} ({key})"
        module, kind = split_lora_key(key)
        out.setdefault(module, {})[kind] = tensor
    return out, None


def array_bytes(record) -> int:
    """Bytes of an ``ArrayRecord``'s serialised arrays (what the wire carries, headers included)."""
    return sum(len(record[key].data) for key in record.keys())
