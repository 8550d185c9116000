"""The run's first global LoRA: PEFT's own initialisation (random A, zero B), seeded.

The server makes it, so every client starts round 1 from the same factors: averaging A and B
across clients is only meaningful when they share their starting point.
"""

from __future__ import annotations

import torch

__all__ = ["initial_lora"]


def initial_lora(base: str, rank: int, alpha: float, targets: tuple[str, ...] | None,
                 seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """``{module: {"A": (r, in), "B": (out, r)}}`` as PEFT initialises a LoRA of ``base``.

    Raises:
        UsageError: the base cannot be loaded, or a target names no linear layer of it.
    """
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    from ..adapters.loading import load_model, model_type, quiet_transformers
    from ..adapters.targets import resolve_targets
    from .payload import split_lora_key

    model = load_model(base, "causal_lm")
    chosen = resolve_targets(model, model_type(base), targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                        task_type="CAUSAL_LM",
                        target_modules=chosen if isinstance(chosen, str) else list(chosen))
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(seed)
        state = get_peft_model_state_dict(get_peft_model(model, config))
    out: dict = {}
    for key, tensor in state.items():
        module, kind = split_lora_key(key)
        out.setdefault(module, {})[kind] = tensor.detach().float().clone()
    return out
