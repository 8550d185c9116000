"""The contract of a merge method.

A merge method is a pure function ``fn(inputs: MergeInputs) -> torch.Tensor`` registered under a
name (see :func:`register`), together with its paper and the parameters it accepts. The engine
calls it once per output tensor with everything already resolved for that tensor:

* ``base`` — the base model's tensor (``None`` when the recipe has no base model);
* ``models`` — one tensor per contributing model, all of the output's shape;
* ``params`` — one dict per model of per-model parameters, already resolved for this tensor
  (a per-layer gradient or filter in a recipe becomes a plain float here), e.g.
  ``{"weight": 0.5, "density": 0.7}``;
* ``options`` — the method's global parameters (``normalize``, ``lambda``, ``t``, ``seed``...);
* ``name`` — the tensor's name (methods that treat some tensors differently, or seed per tensor).

A method never modifies its inputs, computes in float32 (float64 when the inputs are float64),
and returns a tensor of the models' shape; the engine casts it to the output dtype.

**Streaming.** A method may also register ``stream(inputs: LazyInputs) -> Iterator[Tensor]``:
the same computation over inputs that are read on demand (:class:`LazyTensor`), yielding the
flattened result in consecutive 1-D pieces. The engine prefers it, so that it holds a few pieces
of each input instead of every input whole; ``fn`` and ``stream`` must give the same bits
(a contract test checks it). Buffers may be reused: a yielded piece is valid until the next one
is asked for, and a range from :meth:`LazyTensor.flat` until the next ``flat`` call on the same
lazy tensor (copy what must live longer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Protocol

import torch

from ..errors import UsageError

__all__ = ["MergeInputs", "LazyTensor", "LazyInputs", "MergeMethod", "METHODS", "register", "get_method"]


@dataclass(frozen=True)
class MergeInputs:
    base: torch.Tensor | None
    models: list[torch.Tensor]
    params: list[dict[str, float]]
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""


class LazyTensor(Protocol):
    """One input tensor of a streaming merge, read a range of its flattened elements at a time."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    key: Hashable  # equal keys: the same bytes (e.g. the base under an adapter that leaves it alone)

    def flat(self, start: int, stop: int) -> torch.Tensor:
        """Elements ``[start, stop)`` of the flattened tensor, ``(stop - start,)``; read-only, and
        valid until the next ``flat`` call on this object (its buffer may be reused)."""
        ...


@dataclass(frozen=True)
class LazyInputs:
    """:class:`MergeInputs` whose base and models are :class:`LazyTensor` (read on demand)."""

    base: LazyTensor | None
    models: list[LazyTensor]
    params: list[dict[str, float]]
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True)
class MergeMethod:
    """A registered method. ``base_is_input`` and ``inputs`` say how a recipe's ``base_model``
    and model list map onto the method's inputs, as mergekit's input contract does: a method that
    takes the base as its reference (``base_is_input`` false) gets a base listed among the models
    as ``base`` only; one that has no use for a base (linear, passthrough) merges it as one more
    model. ``inputs`` bounds the number of inputs counting that base."""

    name: str
    fn: Callable[[MergeInputs], torch.Tensor]
    needs_base: bool
    paper: str
    model_params: dict[str, float]  # per-model parameters and their defaults
    options: dict[str, Any]  # global options and their defaults
    stream: Callable[[LazyInputs], Iterator[torch.Tensor]] | None = None  # see the module docstring
    base_is_input: bool = False
    inputs: tuple[int, int | None] = (1, None)  # (min, max) inputs, the base included
    model_files: tuple[str, ...] = ()  # per-model parameters that name a file (not numbers)


METHODS: dict[str, MergeMethod] = {}


def register(name: str, *, needs_base: bool, paper: str, model_params: dict[str, float] | None = None,
             options: dict[str, Any] | None = None,
             stream: Callable[[LazyInputs], Iterator[torch.Tensor]] | None = None,
             base_is_input: bool = False, inputs: tuple[int, int | None] = (1, None),
             model_files: tuple[str, ...] = ()):
    """Decorator: register ``fn`` (and its streaming form, if any) as merge method ``name``
    (the keyword arguments are the fields of :class:`MergeMethod`).

    Raises:
        ValueError: ``name`` is already registered.
    """
    def wrap(fn):
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        METHODS[name] = MergeMethod(name, fn, needs_base, paper, dict(model_params or {}),
                                    dict(options or {}), stream, base_is_input, tuple(inputs),
                                    tuple(model_files))
        return fn
    return wrap


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(f"unknown merge method {name!r}; known: {', '.join(sorted(METHODS))}") from None
