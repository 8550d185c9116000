"""Diagonal empirical Fisher information of a model's parameters, for Fisher-weighted merging.

The empirical Fisher of parameter ``p`` is ``E_x[(d loss(x) / d p)^2]``: the mean over examples of
the squared gradient of the loss on that example with its true label. It is per *example*: the
square of a batch's mean gradient is not it, so batches are split into single examples here.
The result feeds the ``fisher`` merge method (:mod:`modelgit.merge.methods.fisher_weighted`).
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

import torch

from ..errors import UsageError

__all__ = ["estimate_fisher", "save_fisher", "load_fisher"]

LossFn = Callable[[torch.nn.Module, dict], torch.Tensor]


def _examples(batch: dict) -> Iterable[dict]:
    """Split a batch dict into batch-size-1 dicts (tensors sliced on dim 0, other values shared)."""
    sizes = {v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
    if len(sizes) != 1:
        raise UsageError(f"a batch must hold tensors with one batch size on dim 0, got sizes {sorted(sizes)} "
                         f"for keys {sorted(batch)}")
    (size,) = sizes
    for i in range(size):
        yield {k: v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in batch.items()}


def _loss(model: torch.nn.Module, example: dict, loss_fn: LossFn | None) -> torch.Tensor:
    if loss_fn is not None:
        return loss_fn(model, example)
    output = model(**example)
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    if loss is None:
        raise UsageError(f"{type(model).__name__}(**batch) returned no .loss; pass loss_fn(model, example) "
                         "to compute the loss of one example")
    return loss


def estimate_fisher(model: torch.nn.Module, batches: Iterable[dict], max_batches: int | None = None,
                    loss_fn: LossFn | None = None) -> dict[str, torch.Tensor]:
    """Estimate the diagonal empirical Fisher of ``model``'s trainable parameters.

    Every batch is split into examples of batch size 1, and for each example the gradient of its
    loss is taken on its own (per-example gradients; gradients never accumulate across examples),
    so the result is the true empirical Fisher ``mean_x grad(x)**2``, not the square of a mean.
    The model is put in eval mode (no dropout) for the estimate and given back in the mode it had;
    its ``.grad`` fields are not touched (gradients come from ``torch.autograd.grad``).

    Args:
        model: the model; only parameters with ``requires_grad`` get a Fisher.
        batches: dicts of tensors with the batch on dim 0 (non-tensor values are passed as they are).
        max_batches: stop after this many batches (None: all of them).
        loss_fn: ``loss_fn(model, example) -> scalar loss``; when None the loss is
            ``model(**example).loss`` (Hugging Face style models given ``labels``).

    Returns:
        ``{parameter name: float32 tensor of the parameter's shape}`` on the CPU.

    Raises:
        UsageError: no examples, no trainable parameters, or no way to compute the loss.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise UsageError(f"{type(model).__name__} has no parameters with requires_grad; nothing to estimate")
    sums = [torch.zeros(p.shape, dtype=torch.float32) for _, p in named]  # each (*param shape)
    count = 0
    was_training = model.training
    model.eval()
    try:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            for example in _examples(batch):
                loss = _loss(model, example, loss_fn)
                grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
                for total, grad in zip(sums, grads):
                    if grad is not None:  # a parameter the loss does not use has zero gradient
                        total += grad.detach().float().cpu().pow(2)
                count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise UsageError("estimate_fisher got no examples; pass at least one non-empty batch")
    return {name: total / count for (name, _), total in zip(named, sums)}


def save_fisher(fisher: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a Fisher (as returned by :func:`estimate_fisher`) as a float32 safetensors file.

    Args:
        fisher: parameter name -> Fisher tensor.
        path: where to write; a regular file there is replaced (atomically: the file is written
            beside it first).
    Raises:
        UsageError: ``path`` is a link, a device, a FIFO or a directory.
    """
    from safetensors.torch import save_file

    from .._outputs import check_output, install_file, remove, remove_stale_temporaries, temporary_path

    path = os.fspath(path)
    check_output(path, "file", force=True)
    tensors = {k: v.detach().to(torch.float32).cpu().contiguous() for k, v in fisher.items()}
    remove_stale_temporaries(os.path.dirname(os.path.abspath(path)), os.path.basename(path))
    tmp = temporary_path(path)
    try:
        save_file(tensors, tmp, metadata={"format": "pt", "content": "diagonal empirical fisher"})
        install_file(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def load_fisher(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a Fisher written by :func:`save_fisher`.

    Args:
        path: the safetensors file.

    Returns:
        Parameter name -> float32 tensor.
    """
    from safetensors.torch import load_file

    return dict(load_file(os.fspath(path)))
