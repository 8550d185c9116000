"""Each classification adapter's own head, for a library whose adapters name different classes.

Classifiers of different tasks (man-page sections and source languages) have heads of
different sizes and meanings: PEFT's ``modules_to_save`` holds one copy of the base's head per
adapter, all of the base head's size, so they cannot be loaded side by side. Here the adapters
are attached without their heads (from a copy of each adapter without the head tensors) and
each head is kept aside; a forward hook on the base's head module computes every row's logits
with the head of the adapter that row is routed to (padded with -inf to the largest head: the
softmax gives the padding no probability), and classes are named by that adapter's own
``labels.json``.
"""

from __future__ import annotations

import json
import os

from ..errors import UsageError

__all__ = ["HEAD_MODULES", "AdapterHeads", "strip_head"]

#: the head modules PEFT saves for SEQ_CLS adapters
HEAD_MODULES = ("classifier", "score")


def _head_tensors(adapter_dir: str) -> tuple[dict, dict]:
    """(head tensors by parameter name ``weight``/``bias`` and module, every other tensor),
    both by the adapter file's own names, read as the merge reads them."""
    from safetensors.torch import load_file

    from ..merge.lora import split_key

    heads, rest = {}, {}
    for name, tensor in load_file(os.path.join(adapter_dir, "adapter_model.safetensors")).items():
        base_name, kind = split_key(name)
        module, _, param = base_name.rpartition(".")
        if kind is None and module in HEAD_MODULES:
            heads.setdefault(module, {})[param] = tensor
        else:
            rest[name] = tensor
    return heads, rest


def strip_head(adapter_dir: str, out_dir: str) -> dict:
    """Write to ``out_dir`` the adapter without its head (``modules_to_save`` cleared, no task
    type); return the head ``{module: {param: tensor}}``."""
    from safetensors.torch import save_file

    from ..merge.lora_config import read_lora_config

    heads, rest = _head_tensors(adapter_dir)
    config = dict(read_lora_config(adapter_dir)[0])
    # no task type: PEFT would add the SEQ_CLS head modules to modules_to_save by itself
    config["modules_to_save"], config["task_type"] = None, None
    os.makedirs(out_dir, exist_ok=True)
    save_file(rest, os.path.join(out_dir, "adapter_model.safetensors"))
    with open(os.path.join(out_dir, "adapter_config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    return heads


class AdapterHeads:
    """The adapters' heads and classes, applied row by row through a hook on the base's head.

    Set :attr:`rows` (one adapter name, or None for the base's own head, per row of the next
    batch) before a forward pass; it is cleared by :meth:`routing`'s caller.
    """

    def __init__(self, base_model, heads: dict[str, dict], labels: dict[str, dict[int, str]]):
        import torch

        modules = {m for parts in heads.values() for m in parts}
        if len(modules) != 1 or not hasattr(base_model, next(iter(modules))):
            raise UsageError(f"the adapters' heads ({', '.join(sorted(modules)) or 'none'}) are not "
                             f"one head module of the base ({type(base_model).__name__})")
        self.module_name = modules.pop()
        self.heads = {name: parts[self.module_name] for name, parts in heads.items()}
        self.labels = labels
        self.size = max(h["weight"].shape[0] for h in self.heads.values())
        self.rows: list[str | None] | None = None
        self._torch = torch
        getattr(base_model, self.module_name).register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.rows is None:
            return output
        torch = self._torch
        hidden = inputs[0]  # (b, ..., hidden)
        out = torch.full((*hidden.shape[:-1], self.size), float("-inf"), dtype=hidden.dtype)
        for row, name in enumerate(self.rows):
            if name is None or name not in self.heads:  # the base's own head
                width = min(output.shape[-1], self.size)
                out[row, ..., :width] = output[row, ..., :width]
                continue
            head = self.heads[name]
            logits = torch.nn.functional.linear(hidden[row], head["weight"].to(hidden.dtype),
                                                head.get("bias"))
            out[row, ..., :logits.shape[-1]] = logits
        return out

    def label(self, adapter: str | None, index: int, fallback: dict) -> str:
        """The name of class ``index`` of ``adapter``'s head (the base's names otherwise)."""
        names = self.labels.get(adapter) if adapter else None
        names = names or fallback
        return str(names.get(index, index))
