"""Raw tensor bytes <-> torch tensors, for the code that computes on weights (diff, merge), and
the masked mean of hidden states that embeddings, routers and the classifier's probe pool by."""

from __future__ import annotations

import torch

from .dtypes import DTYPES

__all__ = ["to_torch", "from_torch", "dtype_name", "masked_mean"]

_BY_TORCH = {getattr(torch, d.torch_name): d.name for d in DTYPES.values() if d.torch_name}


def to_torch(raw, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor over a copy of ``raw`` (little-endian bytes of safetensors dtype ``dtype``)."""
    torch_dtype = getattr(torch, DTYPES[dtype].torch_name)
    if len(raw) == 0:
        return torch.empty(shape, dtype=torch_dtype)
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return flat.view(torch_dtype).reshape(shape)


def dtype_name(tensor: torch.Tensor) -> str:
    return _BY_TORCH[tensor.dtype]


def from_torch(tensor: torch.Tensor) -> bytes:
    """Raw little-endian C-order bytes of ``tensor``."""
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(b, d): ``hidden`` (b, t, d) averaged over each row's real tokens (``mask`` (b, t), 1 for
    a token, 0 for padding), in ``hidden``'s dtype; a row without tokens is zeros."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
