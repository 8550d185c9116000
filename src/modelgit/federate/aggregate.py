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

``server_lr`` is FedOpt's server learning rate (Reddi et al. 2021, "Adaptive Federated
Optimization", https://arxiv.org/abs/2003.00295, with plain SGD on the server): the aggregate
is read as a step from the round's start and the new global is ``start + server_lr · (aggregate
- start)``, on the factors for ``fedavg`` / ``fisher`` and on the full updates (before the
re-factoring) for the others. Averaging C clients' updates moves the global as far as one
client's ``steps`` steps, where a central run on the union takes ``C · steps`` steps in the same
compute; ``server_lr = C`` gives the global the sum of the clients' steps instead.

Nothing here modifies its inputs, and the result does not depend on the order of the updates:
they are aggregated in an order of their content (:func:`in_content_order`). Floating-point sums
depend on their order, and replies are ordered by the clients' anonymous ids, which a run's
salt makes different every run: before, two runs of one recipe and seed drifted apart from the
first round by rounding alone (and DARE's random masks went to other clients).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..merge.base import MergeInputs, get_method
from ..merge.lora import low_rank
from ..tensor_math import from_torch

__all__ = ["ClientUpdate", "aggregate", "full_update", "in_content_order", "server_step", "update_norm"]

LoraState = dict[str, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ClientUpdate:
    """One accepted client's reply: its anonymous id, example count, LoRA (and Fisher)."""

    client: str
    examples: int
    lora: LoraState
    fisher: LoraState | None = None


def _digest(update: ClientUpdate) -> bytes:
    import blake3

    h = blake3.blake3(str(update.examples).encode())
    for kind, state in (("lora", update.lora), ("fisher", update.fisher or {})):
        for module in sorted(state):
            for name in sorted(state[module]):
                tensor = state[module][name].cpu()
                h.update(f"\0{kind}\0{module}\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
                h.update(from_torch(tensor))
    return h.digest()


def in_content_order(updates: list[ClientUpdate]) -> list[ClientUpdate]:
    """``updates`` sorted by a digest of their example counts and tensors: the same updates in
    any order give the same list (identical updates are interchangeable)."""
    return [u for _, u in sorted(((_digest(u), i), u) for i, u in enumerate(updates))
            ] if len(updates) > 1 else list(updates)


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


def server_step(start: torch.Tensor, merged: torch.Tensor, server_lr: float) -> torch.Tensor:
    """``start + server_lr · (merged - start)``: the aggregate as a step, scaled (FedOpt's server
    SGD). ``server_lr`` 1 returns ``merged`` itself."""
    if server_lr == 1.0:
        return merged
    return start.float() + server_lr * (merged - start.float())


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
              alpha: float, density: float = 0.5, trim: float = 0.2, seed: int = 0,
              server_lr: float = 1.0) -> LoraState:
    """The next global LoRA from the round's accepted client updates.

    Args:
        method: ``fedavg``, ``fisher``, ``fedavg_full``, ``median``, ``trimmed_mean`` or a merge
            method of :mod:`modelgit.merge.methods` (applied to the full updates).
        start: the global LoRA the round started from (the base of task-vector methods).
        updates: at least one accepted update, with the same modules and shapes as ``start``.
        rank, alpha: the run's LoRA rank and alpha.
        density, trim, seed: settings of sparsifying methods and of ``trimmed_mean``.
        server_lr: the server's learning rate on the aggregated step (see the module docstring).
    Returns:
        The new LoRA state, float32.
    Raises:
        UsageError: no updates, an unknown method, or ``fisher`` without Fisher estimates.
    """
    if not updates:
        raise UsageError("no client update to aggregate")
    updates = in_content_order(updates)
    weights = _weights(updates)
    if method in ("fedavg", "fisher"):
        merged = (_factor_average if method == "fedavg" else _fisher_average)(updates, weights)
        return {module: {kind: server_step(start[module][kind], tensor, server_lr)
                         for kind, tensor in parts.items()} for module, parts in merged.items()}
    scale = alpha / rank
    out: LoraState = {}
    for module, parts in start.items():
        begin = full_update(parts, scale)
        deltas = [full_update(u.lora[module], scale) for u in updates]
        merged = _combine_full(method, begin, deltas, weights, density, trim, seed, module)
        out[module] = _refactored(server_step(begin, merged, server_lr), rank, scale)
    return out
