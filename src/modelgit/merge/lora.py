"""PEFT LoRA adapters: read them exactly as PEFT does, apply them, extract them.

The update of a LoRA module is ``scale · B A`` with ``scale = lora_alpha / r`` (``/ sqrt(r)``
with ``use_rslora``), per-module ``rank_pattern`` / ``alpha_pattern`` overrides, transposed for
``fan_in_fan_out`` layers (GPT-2's Conv1D) and for embeddings (``lora_embedding_A/B``).
``modules_to_save`` copies replace the base weights outright, and so do base layers that PEFT
saves beside embedding adapters (``save_embedding_layers``). Merging one adapter at weight 1
therefore reproduces what PEFT's ``merge_and_unload`` gives.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

import blake3
import torch

from .._outputs import check_output, remove
from ..errors import FormatError, UsageError
from ..formats.safetensors_format import open_safetensors
from ..tensor_math import to_torch

__all__ = ["Adapter", "load_adapter", "extract_lora", "low_rank", "save_adapter", "split_key",
           "pattern_value"]

PREFIX = "base_model.model."
_LORA_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<kind>A|B|embedding_A|embedding_B)(?:\.[^.]+)?\.weight$|"
                      r"^(?P<module2>.+)\.lora_(?P<kind2>embedding_A|embedding_B)(?:\.[^.]+)?$")
_SAVED_RE = re.compile(r"\.modules_to_save(\.[^.]+)?|\.base_layer")


def split_key(name: str) -> tuple[str, str | None]:
    """What a tensor of a PEFT adapter file is, as PEFT reads it: ``(module, kind)`` for a LoRA
    half (kind ``A``, ``B``, ``embedding_A`` or ``embedding_B``), or ``(base tensor, None)`` for
    a ``modules_to_save`` copy or a base layer saved beside embedding adapters, which replace
    that base tensor outright."""
    name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    match = _LORA_RE.match(name)
    if match is None:
        return _SAVED_RE.sub("", name), None
    return match.group("module") or match.group("module2"), match.group("kind") or match.group("kind2")


def pattern_value(pattern: dict, module: str, default):
    """PEFT's rank/alpha pattern lookup: a key matches a module name suffix (or regex)."""
    for key, value in (pattern or {}).items():
        if module == key or module.endswith("." + key) or re.fullmatch(key, module):
            return value
    return default


@dataclass
class Adapter:
    path: str
    config: dict
    lora: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # module -> {A, B, embedding}
    saved: dict[str, torch.Tensor] = field(default_factory=dict)  # base tensor name -> replacement
    digest: str = ""
    # tensors no base has: a task head (modules_to_save) by its task-model name (see task_heads)
    heads: dict[str, torch.Tensor] = field(default_factory=dict)

    def scale(self, module: str) -> float:
        r = pattern_value(self.config.get("rank_pattern"), module, self.config["r"])
        alpha = pattern_value(self.config.get("alpha_pattern"), module, self.config.get("lora_alpha", r))
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def delta(self, module: str) -> torch.Tensor:
        """The full-rank update of ``module``'s weight, in float32, shaped like the weight."""
        parts = self.lora[module]
        a, b = parts["A"].float(), parts["B"].float()  # (r, in), (out, r)
        update = (b @ a) * self.scale(module)  # (out, in)
        if parts.get("embedding"):
            update = update.T  # embeddings store (vocab, dim); lora_embedding_A is (r, vocab)
        elif self.config.get("fan_in_fan_out"):
            update = update.T
        return update

    def targets(self) -> dict[str, str]:
        """Base tensor name -> LoRA module, for every module the adapter changes."""
        return {f"{module}.weight": module for module in self.lora}

    def apply(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if name in self.saved:  # modules_to_save, or a saved (possibly resized) base layer
            weight = self.saved[name].to(weight.dtype)
        module = self.targets().get(name)
        if module is None:
            return weight
        delta = self.delta(module)
        if delta.shape != weight.shape:
            raise FormatError(f"{self.path}: LoRA update of {module} has shape {tuple(delta.shape)} "
                              f"but the base weight {name} has {tuple(weight.shape)}: wrong base model?")
        return (weight.float() + delta).to(weight.dtype)

    def identity(self) -> str:
        return self.digest


def load_adapter(path: str, base_tensors: dict | None = None, prefix: str | None = None) -> Adapter:
    """Read a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).

    Args:
        base_tensors: the names of the base's tensors: the adapter's names are mapped onto them.
        prefix: the ``base_model_prefix`` of the task model the adapter was trained on (see
            :func:`.task_heads.task_model`): its body's names are mapped onto a base saved
            with or without that prefix, and ``modules_to_save`` tensors the base lacks are
            the adapter's task head (``Adapter.heads``).

    Raises:
        FormatError: not a LoRA adapter, a config that is not strict JSON or has unusable values
            (see :mod:`.lora_config`), a pickled adapter (.bin), DoRA, missing or mismatched A/B
            halves, or (with ``base_tensors``) modules that the base does not have.
    """
    config_path = os.path.join(path, "adapter_config.json")
    weights = os.path.join(path, "adapter_model.safetensors")
    if not os.path.isfile(config_path):
        raise FormatError(f"{path}: no adapter_config.json; not a PEFT adapter directory")
    if not os.path.isfile(weights):
        hint = " (only a pickled adapter_model.bin: convert it to safetensors)" \
            if os.path.exists(os.path.join(path, "adapter_model.bin")) else ""
        raise FormatError(f"{path}: no adapter_model.safetensors{hint}")
    from .lora_config import read_lora_config

    config, raw_config = read_lora_config(path)  # strict JSON, every value checked
    if config.get("use_dora"):
        raise FormatError(f"{path}: DoRA adapters are not supported yet (use_dora: true)")
    adapter = Adapter(path, config)
    digest = blake3.blake3(raw_config)
    reader = open_safetensors(weights)
    try:
        for entry in reader.entries():
            data = reader.data(entry.name)
            digest.update(entry.name.encode() + b"\0" + bytes(data))
            tensor = to_torch(data, entry.dtype, entry.shape)
            module, kind = split_key(entry.name)
            if kind is None:
                adapter.saved[module] = tensor
                continue
            parts = adapter.lora.setdefault(module, {})
            if kind.startswith("embedding"):
                parts["embedding"] = True
            parts["A" if kind.endswith("A") else "B"] = tensor
    finally:
        reader.close()
    adapter.digest = digest.hexdigest()
    incomplete = sorted(m for m, p in adapter.lora.items() if "A" not in p or "B" not in p)
    if incomplete:
        raise FormatError(f"{path}: LoRA modules without both A and B: {incomplete[:5]}")
    misshapen = sorted(m for m, p in adapter.lora.items()
                       if p["A"].dim() != 2 or p["B"].dim() != 2 or p["A"].shape[0] != p["B"].shape[1])
    if misshapen:  # B @ A must be defined: (out, r) @ (r, in)
        module = misshapen[0]
        raise FormatError(f"{path}: LoRA halves of {module!r} do not fit together (A "
                          f"{list(adapter.lora[module]['A'].shape)}, B "
                          f"{list(adapter.lora[module]['B'].shape)}; A must be (r, in) and B "
                          f"(out, r)): the adapter file is damaged")
    if base_tensors is not None:
        _align(adapter, base_tensors, prefix)
        unknown = sorted(n for n in [*adapter.targets(), *adapter.saved] if n not in base_tensors)
        if unknown:
            raise FormatError(f"{path}: the adapter changes tensors the base model does not have: "
                              f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''} (wrong base model?)")
    return adapter


def _align(adapter: Adapter, base_tensors, prefix: str | None) -> None:
    """Rename the adapter's modules and saved tensors to the base's names (a task model's body
    onto a bare base, or the other way); with a task ``prefix``, saved tensors the base has no
    counterpart for become ``adapter.heads``. Names that fit nothing are left for the caller's
    check to report."""
    from .task_heads import align_name

    lora = {}
    for module, parts in adapter.lora.items():
        target = align_name(f"{module}.weight", base_tensors, prefix)
        lora[target[: -len(".weight")] if target else module] = parts
    adapter.lora = lora
    saved = {}
    for name, tensor in adapter.saved.items():
        target = align_name(name, base_tensors, prefix)
        if target is not None:
            saved[target] = tensor
        elif prefix:
            adapter.heads[name] = tensor
        else:
            saved[name] = tensor
    adapter.saved = saved


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors (B, A) of a 2-D update: ``B @ A ≈ delta`` (truncated SVD)."""
    if delta.dim() != 2:
        raise UsageError(f"a LoRA needs 2-D weights, not shape {tuple(delta.shape)}")
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)  # (out,k) (k,) (k,in)
    rank = min(rank, s.numel())
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]  # (out, r), (r, in)


def save_adapter(path: str, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int,
                 alpha: float, base: str = "", extra: dict | None = None, force: bool = False) -> None:
    """Write a PEFT adapter directory from {module: (B, A)} with ``B @ A`` the unscaled update.

    The directory is written beside ``path`` and put in place when complete, with the rules of
    a merge output (:mod:`modelgit.merge.writer`): a non-empty ``path`` needs ``force``, and
    then only its adapter and weight files are replaced.

    Raises:
        UsageError: ``path`` is not a directory the adapter may go to.
    """
    from safetensors.torch import save_file

    from .writer import finish_output, prepare_output

    tensors = {}
    for module, (b, a) in sorted(factors.items()):
        tensors[f"{PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = (b / (alpha / rank)).contiguous()
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "use_rslora": False,
              "target_modules": sorted({m.rsplit(".", 1)[-1] for m in factors}),
              "base_model_name_or_path": base, "bias": "none", "fan_in_fan_out": False,
              "task_type": None, **(extra or {})}
    tmp = prepare_output(path, force)
    try:
        save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"))
        with open(os.path.join(tmp, "adapter_config.json"), "w") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
        finish_output(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def extract_lora(base, tuned, rank: int, out: str, alpha: float | None = None,
                 min_numel: int = 0, force: bool = False, progress: bool | None = None) -> dict:
    """Write to ``out`` a LoRA of ``rank`` approximating ``tuned - base`` for every 2-D weight.

    Args:
        base, tuned: merge sources (see :mod:`modelgit.merge.sources`).
        force: write into ``out`` even when it is a non-empty directory (see
            :func:`save_adapter`).
        progress: show progress over the weights compared (an SVD each: minutes for a large
            model); default when stderr is a terminal.
    Returns:
        {module: relative Frobenius error of the approximation}.
    Raises:
        UsageError: ``out`` cannot take the adapter, or the checkpoints do not differ.
    """
    from ..progress import progress_bar

    check_output(out, "directory", force)  # before the SVDs: fail fast
    alpha = float(alpha if alpha is not None else rank)
    infos, factors, errors = base.tensors(), {}, {}
    candidates = {name: info for name, info in tuned.tensors().items()
                  if name.endswith(".weight") and len(info.shape) == 2 and name in infos}
    # counted in float32 bytes, what each comparison decodes and decomposes
    total = sum(4 * info.shape[0] * info.shape[1] for info in candidates.values())
    with progress_bar(total, f"extract-lora rank {rank}", progress) as bar:
        for name, info in candidates.items():
            delta = tuned.load(name).float() - base.load(name).float()  # (out, in)
            if delta.numel() >= min_numel and torch.any(delta):
                b, a = low_rank(delta, rank)
                module = name[: -len(".weight")]
                factors[module] = (b, a)
                errors[module] = float(torch.linalg.norm(b @ a - delta) / torch.linalg.norm(delta))
            bar.update(4 * info.shape[0] * info.shape[1])
    if not factors:
        raise UsageError("the two checkpoints do not differ in any 2-D weight: nothing to extract")
    save_adapter(out, factors, rank, alpha, base=_base_reference(getattr(base, "label", "")),
                 force=force)
    return errors


def _base_reference(label: str) -> str:
    """What the adapter's ``base_model_name_or_path`` records: a local base as an absolute path
    (a relative one names nothing once the adapter is used from another directory), anything
    else (``PATH@REV``, a hub id) as given."""
    return os.path.abspath(label) if label and os.path.exists(label) else label
