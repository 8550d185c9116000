"""Aggregation of one round's client LoRAs into the next global LoRA: pure tensor functions.

A LoRA state is ``{module: {"A": (r, in), "B": (out, r)}}`` as PEFT stores it (``B`` unscaled);
every client of a run uses the same rank and alpha, so the update of a module is
``scale · B @ A`` with one ``scale = alpha / rank``.

* ``fedavg``: the factors averaged, weighted by example counts (FedIT). Every client starts the
  round from the same global factors, which is what keeps their A and B comparable.
* ``fisher``: the factors averaged per entry with the clients' diagonal Fisher estimates as
  weights (the merge engine's ``fisher`` method, Matena & Raffel 2022).
* everything else works on the full updates ``ΔW_i = scale · B_i A_i`` (out, in): ``fedavg_full``
  their weighted mean, ``median`` / ``trimmed_mean`` coordinate-wise robust statistics, and any
  merge method of the engine (TIES, DARE, task arithmetic...) with the round's starting update as
  its base, so that task vectors are what each client changed this round. The result is
  re-factored to the round's rank by truncated SVD (:func:`modelgit.merge.lora.low_rank`).

Nothing here modifies its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..merge.base import MergeInputs, get_method
from ..merge.lora import low_rank

__all__ = ["ClientUpdate", "aggregate", "full_update", "update_norm"]

LoraState = dict[str, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ClientUpdate:
    """One accepted client's reply: its anonymous id, example count, LoRA (and Fisher)."""

    client: str
    examples: int
    lora: LoraState
    fisher: LoraState | None = None


def full_update(parts: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    """``scale · B @ A`` in float32: (out, r) @ (r, in) -> (out, in)."""
    return (parts["B"].float() @ parts["A"].float()) * scale


def update_norm(lora: LoraState, start: LoraState) -> float:
    """Frobenius norm of what a client changed: its factors minus the round's starting ones."""
    total = 0.0
    for module, parts in lora.items():
        for kind in ("A", "B"):
            total += float((parts[kind].float() - start[module][kind].float()).pow(2).sum())
    return total ** 0.5


def _weights(updates: list[ClientUpdate]) -> list[float]:
    total = sum(u.examples for u in updates)
    return [u.examples / total for u in updates]


def _factor_average(updates: list[ClientUpdate], weights: list[float]) -> LoraState:
    out: LoraState = {}
    for module in updates[0].lora:
        out[module] = {kind: sum(w * u.lora[module][kind].float() for w, u in zip(weights, updates))
                       for kind in ("A", "B")}
    return out


def _fisher_average(updates: list[ClientUpdate], weights: list[float]) -> LoraState:
    method = get_method("fisher")
    out: LoraState = {}
    for module in updates[0].lora:
        out[module] = {}
        for kind in ("A", "B"):
            if any(u.fisher is None for u in updates):
                raise UsageError("the fisher aggregation needs every client's Fisher estimate")
            inputs = MergeInputs(None, [u.lora[module][kind] for u in updates],
                                 [{"weight": w} for w in weights],
                                 {"fisher": [u.fisher[module][kind] for u in updates]},
                                 f"{module}.{kind}")
            out[module][kind] = method.fn(inputs).float()
    return out


def _robust(deltas: list[torch.Tensor], method: str, trim: float) -> torch.Tensor:
    stacked = torch.stack(deltas)  # (clients, out, in)
    if method == "median":
        return stacked.median(dim=0).values if len(deltas) % 2 else stacked.quantile(0.5, dim=0)
    cut = int(trim * len(deltas))  # clients dropped at each end, per coordinate
    ordered = stacked.sort(dim=0).values
    return ordered[cut:len(deltas) - cut].mean(dim=0)


def _combine_full(method: str, start: torch.Tensor, deltas: list[torch.Tensor],
                  weights: list[float], density: float, trim: float, seed: int,
                  name: str) -> torch.Tensor:
    if method == "fedavg_full":
        return sum(w * d for w, d in zip(weights, deltas))
    if method in ("median", "trimmed_mean"):
        return _robust(deltas, method, trim)
    merge = get_method(method)
    params = [{"weight": w, **({"density": density} if "density" in merge.model_params else {})}
              for w in weights]
    options = {"seed": seed} if "seed" in merge.options else {}
    inputs = MergeInputs(start if merge.needs_base else None, deltas, params, options, name)
    return merge.fn(inputs).float()


def _refactored(update: torch.Tensor, rank: int, scale: float) -> dict[str, torch.Tensor]:
    """PEFT factors of ``update`` at ``rank``: ``scale · B @ A ≈ update``."""
    b, a = low_rank(update, rank)  # (out, r), (r, in) with b @ a ≈ update
    if a.shape[0] < rank:  # a module smaller than the rank: pad with zero directions
        a = torch.cat([a, a.new_zeros(rank - a.shape[0], a.shape[1])])
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - b.shape[1])], dim=1)
    return {"A": a.contiguous(), "B": (b / scale).contiguous()}


def aggregate(method: str, start: LoraState, updates: list[ClientUpdate], *, rank: int,
              alpha: float, density: float = 0.5, trim: float = 0.2, seed: int = 0) -> LoraState:
    """The next global LoRA from the round's accepted client updates.

    Args:
        method: ``fedavg``, ``fisher``, ``fedavg_full``, ``median``, ``trimmed_mean`` or a merge
            method of :mod:`modelgit.merge.methods` (applied to the full updates).
        start: the global LoRA the round started from (the base of task-vector methods).
        updates: at least one accepted update, with the same modules and shapes as ``start``.
        rank, alpha: the run's LoRA rank and alpha.
        density, trim, seed: settings of sparsifying methods and of ``trimmed_mean``.
    Returns:
        The new LoRA state, float32.
    Raises:
        UsageError: no updates, an unknown method, or ``fisher`` without Fisher estimates.
    """
    if not updates:
        raise UsageError("no client update to aggregate")
    weights = _weights(updates)
    if method == "fedavg":
        return _factor_average(updates, weights)
    if method == "fisher":
        return _fisher_average(updates, weights)
    scale = alpha / rank
    out: LoraState = {}
    for module, parts in start.items():
        begin = full_update(parts, scale)
        deltas = [full_update(u.lora[module], scale) for u in updates]
        merged = _combine_full(method, begin, deltas, weights, density, trim, seed, module)
        out[module] = _refactored(merged, rank, scale)
    return out
