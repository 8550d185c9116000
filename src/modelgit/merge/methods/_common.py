"""Helpers shared by the merge methods: working dtype, stacking, parameters, seeding, checks,
and the pieces of streaming (blocks of a flattened tensor, in-memory inputs seen as lazy ones)."""

from __future__ import annotations

import hashlib
import math
from typing import Any, Iterable, Iterator

import torch

from ...errors import UsageError
from ..base import LazyInputs, MergeInputs

__all__ = ["work_dtype", "stack", "per_model", "option", "generator_for", "require_models",
           "require_base", "column", "BLOCK", "blocks", "numel", "InMemoryTensor", "as_lazy", "collect"]

# elements per piece of a streamed merge: 1 MiB of float32, small next to any large tensor (and
# so a few of them stay in the caches), large enough that the per-piece Python overhead is a few
# percent on one thread; a multiple of every SIMD width, so the vectorised kernels see the same
# alignment as on the whole tensor
BLOCK = 1 << 18


def work_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else (fp16, bf16, fp32, ints)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def stack(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Stack same-shaped tensors in ``dtype`` without touching the originals."""
    return torch.stack([t.to(dtype) for t in tensors])  # (models, *shape)


def column(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """Per-model scalars shaped to broadcast against a ``(models, *shape)`` stack."""
    return torch.tensor(values, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))  # (models, 1, ...)


def per_model(inputs: MergeInputs, key: str, default: float) -> list[float]:
    """One float per model: ``params[i][key]``, or ``default`` where a model does not set it."""
    params = list(inputs.params) + [{}] * (len(inputs.models) - len(inputs.params))
    return [float(p.get(key, default)) for p in params[: len(inputs.models)]]


def option(inputs: MergeInputs, key: str, defaults: dict[str, Any]) -> Any:
    """A global option of the method, falling back to the registered default."""
    return inputs.options.get(key, defaults[key])


def generator_for(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from ``(seed, tensor name)`` by a stable hash.

    Python's ``hash()`` is salted per process, so it would make a recipe irreproducible;
    blake2b of the pair is the same on every machine and run, and differs between tensors.
    """
    digest = hashlib.blake2b(f"{int(seed)}\x00{name}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def require_models(method: str, inputs: MergeInputs, minimum: int, maximum: int | None = None) -> None:
    """Raise UsageError unless the number of models is within ``[minimum, maximum]``
    and all models (and the base) share one shape."""
    n = len(inputs.models)
    if n < minimum or (maximum is not None and n > maximum):
        want = f"exactly {minimum}" if maximum == minimum else (
            f"{minimum} to {maximum}" if maximum is not None else f"at least {minimum}")
        raise UsageError(f"{method} merges {want} model(s), got {n} for tensor {inputs.name!r}")
    shapes = {tuple(m.shape) for m in inputs.models}
    if inputs.base is not None:
        shapes.add(tuple(inputs.base.shape))
    if len(shapes) > 1:
        raise UsageError(f"{method}: tensor {inputs.name!r} has different shapes across models: "
                         f"{sorted(shapes)}; merge only tensors of one shape")


def require_base(method: str, inputs: MergeInputs) -> torch.Tensor:
    """The base tensor, or a UsageError saying that the recipe needs ``base_model``."""
    if inputs.base is None:
        raise UsageError(f"{method} needs a base model (tensor {inputs.name!r} has none); "
                         "set base_model in the recipe")
    return inputs.base


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def blocks(count: int, size: int | None = None) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges of ``size`` (default :data:`BLOCK`) covering ``range(count)`` in
    order; one empty range when ``count`` is 0."""
    size = size or BLOCK
    if count == 0:
        yield 0, 0
    for start in range(0, count, size):
        yield start, min(count, start + size)


class InMemoryTensor:
    """A tensor already in memory, seen as a :class:`~modelgit.merge.base.LazyTensor`."""

    def __init__(self, tensor: torch.Tensor):
        self.shape = tuple(tensor.shape)
        self.dtype = tensor.dtype
        self.key = id(tensor)  # the caller keeps the tensor alive for the whole merge
        self._flat = tensor.reshape(-1)  # (numel,) a view unless the tensor is not contiguous

    def flat(self, start: int, stop: int) -> torch.Tensor:
        return self._flat[start:stop]


def as_lazy(inputs: MergeInputs) -> LazyInputs:
    """The same inputs, for a method's ``stream`` form."""
    base = None if inputs.base is None else InMemoryTensor(inputs.base)
    return LazyInputs(base, [InMemoryTensor(m) for m in inputs.models], inputs.params, inputs.options,
                      inputs.name)


def collect(pieces: Iterable[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """The whole tensor of ``shape`` from a stream's consecutive 1-D pieces, each copied out as
    it comes (a stream may reuse one buffer for its pieces)."""
    out, filled = None, 0
    for piece in pieces:
        if out is None:
            out = torch.empty(math.prod(shape), dtype=piece.dtype)  # (numel,)
        out[filled:filled + piece.numel()] = piece
        filled += piece.numel()
    if out is None:
        raise ValueError("a merge stream yielded no piece")
    if filled != out.numel():
        raise ValueError(f"a merge stream yielded {filled} elements for a tensor of {out.numel()}")
    return out.reshape(shape)
