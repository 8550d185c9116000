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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import UsageError

__all__ = ["MergeInputs", "MergeMethod", "METHODS", "register", "get_method"]


@dataclass(frozen=True)
class MergeInputs:
    base: torch.Tensor | None
    models: list[torch.Tensor]
    params: list[dict[str, float]]
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[[MergeInputs], torch.Tensor]
    needs_base: bool
    paper: str
    model_params: dict[str, float]  # per-model parameters and their defaults
    options: dict[str, Any]  # global options and their defaults


METHODS: dict[str, MergeMethod] = {}


def register(name: str, *, needs_base: bool, paper: str, model_params: dict[str, float] | None = None,
             options: dict[str, Any] | None = None):
    """Decorator: register ``fn`` as merge method ``name``. A duplicate name raises ValueError."""
    def wrap(fn):
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        METHODS[name] = MergeMethod(name, fn, needs_base, paper, dict(model_params or {}),
                                    dict(options or {}))
        return fn
    return wrap


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(f"unknown merge method {name!r}; known: {', '.join(sorted(METHODS))}") from None
