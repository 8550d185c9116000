"""Tokenized examples into padded batches, in an order fixed by the seed."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

__all__ = ["encode", "batch_plan", "in_order", "collate", "iterate"]


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to ``max_length`` (no padding yet)."""
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def batch_plan(n: int, batch_size: int, seed: int, steps: int | None,
               epochs: int | None) -> list[list[int]]:
    """Example indices of each step: shuffled epoch after epoch (a fresh permutation from the
    seed each time), cut into batches that may straddle epochs; ``steps`` steps, or as many as
    ``epochs`` passes take (the last batch may then be short)."""
    rng = np.random.default_rng(seed)
    total = steps * batch_size if steps else (epochs or 1) * n
    order: list[int] = []
    while len(order) < total:
        order.extend(int(i) for i in rng.permutation(n))
    order = order[:total]
    return [order[i:i + batch_size] for i in range(0, total, batch_size)]


def in_order(n: int, batch_size: int) -> list[list[int]]:
    """Example indices 0..n-1 in batches of ``batch_size``, in order (an evaluation pass)."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def collate(ids: list[list[int]], pad_id: int, labels: list[int] | None = None) -> dict:
    """Right-padded tensors; without class ``labels``, causal-LM labels with padding at -100."""
    width = max(len(seq) for seq in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)  # (batch, width)
    mask = torch.zeros((len(ids), width), dtype=torch.long)  # (batch, width)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if labels is None:
        batch["labels"] = input_ids.masked_fill(mask == 0, -100)  # (batch, width)
    else:
        batch["labels"] = torch.tensor(labels, dtype=torch.long)  # (batch,)
    return batch


def iterate(plan: list[list[int]], ids: list[list[int]], pad_id: int,
            labels: list[int] | None) -> Iterator[dict]:
    for step in plan:
        yield collate([ids[i] for i in step], pad_id, [labels[i] for i in step] if labels else None)
