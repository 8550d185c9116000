"""The base model of a library with every adapter loaded (PEFT), its tokenizer, and the pieces
routers read from it: hidden states after a few layers (the forward pass stops there), and the
inputs of the LoRA target layers.

Truncation: a text longer than the model's context is cut to it, with one warning per call
(``warnings.warn``) saying how many texts were cut and to what length; never an error.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["Runtime", "EarlyExit", "PEFT_BASE"]

#: PEFT's name for "no adapter" in a mixed batch (``adapter_names``)
PEFT_BASE = "__base__"
#: contexts above this are taken as "no limit recorded" (tokenizers say 1e30)
_NO_LIMIT = 1_000_000


class EarlyExit(Exception):
    """Raised by a forward hook to stop a forward pass once what it needs was computed."""


@dataclass(frozen=True)
class Encoded:
    """A right-padded batch and how many of its texts were truncated."""

    batch: dict
    truncated: int
    limit: int


class Runtime:
    """The library's base model (float32, CPU) with all its adapters loaded into one PEFT model
    under their library names, and the tokenizer.

    Args:
        library: a :class:`~modelgit.route.library.Library`.
        task: ``causal_lm`` or ``classification`` (default: from the adapters' task type).
        max_length: the longest input in tokens (default: the model's context).
    Raises:
        UsageError: the base or an adapter cannot be loaded, or adapters of different tasks.
    """

    def __init__(self, library, task: str | None = None, max_length: int | None = None):
        from ..adapters.loading import load_model, load_tokenizer, quiet_transformers, shared_pooling

        self.library = library
        self.task = task or _library_task(library)
        self.tokenizer = load_tokenizer(library.base_dir)
        #: each classification adapter's classes (its labels.json), by adapter name
        self.adapter_labels = _adapter_labels(library) if self.task == "classification" else {}
        distinct = {tuple(sorted(v.items())) for v in self.adapter_labels.values() if v}
        shared = next((v for v in self.adapter_labels.values() if v), None) if len(distinct) == 1 else None
        widest = max((v for v in self.adapter_labels.values() if v), key=len, default=None)
        pooling = shared_pooling({a.name: a.directory for a in library.adapters}) \
            if self.task == "classification" else None
        base = load_model(library.base_dir, self.task, id2label=shared or widest,
                          pad_token_id=self.tokenizer.pad_token_id, pooling=pooling)
        #: per-adapter heads when the adapters name different classes (see _heads), else None
        self.heads = None
        with quiet_transformers():
            if len(distinct) > 1:
                self.model, self.heads = _attach_with_own_heads(base, library, self.adapter_labels)
            else:
                self.model = _attach_all(base, library)
        self.model.eval()
        self.context = self._context()
        self.max_length = min(max_length or self.context, self.context)
        self.layers = _decoder_layers(self.model.get_base_model())
        self._lora_layers = self._switches = None

    # ------------------------------------------------------------------ inputs
    def _context(self) -> int:
        config = self.model.get_base_model().config
        limits = [getattr(config, "max_position_embeddings", None),
                  getattr(self.tokenizer, "model_max_length", None)]
        limits = [int(x) for x in limits if isinstance(x, (int, float)) and 0 < x < _NO_LIMIT]
        return min(limits) if limits else 2048

    def encode(self, texts: list[str], max_length: int | None = None,
               count: bool = True) -> Encoded:
        """Tokenize ``texts`` into one right-padded batch, each cut to ``max_length`` tokens
        (default: the model's context).

        Args:
            count: count the texts that were cut (routers, which read a text's start on
                purpose, skip it: it tokenizes each text whole once more).
        """
        limit = min(max_length or self.max_length, self.max_length)
        truncated = 0
        if count:
            full = self.tokenizer(list(texts), truncation=False)["input_ids"]
            truncated = sum(1 for ids in full if len(ids) > limit)
        batch = self.tokenizer(list(texts), truncation=True, max_length=limit, padding=True,
                               return_tensors="pt")
        batch.pop("token_type_ids", None) if self.task == "causal_lm" else None
        return Encoded(dict(batch), truncated, limit)

    def warn_truncated(self, encoded: list[Encoded], what: str = "input") -> None:
        """One warning for every text cut in this call (never an error)."""
        count = sum(e.truncated for e in encoded)
        if count:
            limit = encoded[0].limit
            warnings.warn(f"{count} {what}(s) longer than {limit} tokens (the model's context) "
                          f"were truncated to {limit} tokens", UserWarning, stacklevel=3)

    # ------------------------------------------------------------------ base passes
    @contextlib.contextmanager
    def base_only(self):
        """Run the base model alone (every adapter off).

        PEFT's ``disable_adapter()`` walks every module and reads every parameter's status on
        each call (0.1-0.2 s of CPU for SmolLM2-135M: more than a routing pass itself); the
        flag it ends up setting is set here directly on the adapter layers, found once.
        """
        layers = self._switchable()
        before = [layer._disable_adapters for layer in layers]
        for layer in layers:
            layer._disable_adapters = True
        try:
            yield
        finally:
            for layer, state in zip(layers, before):
                layer._disable_adapters = state

    def _switchable(self) -> list:
        """The modules whose adapters ``disable_adapter()`` switches off (LoRA layers and
        ``modules_to_save`` wrappers such as classifier heads)."""
        if self._switches is None:
            from peft.tuners.tuners_utils import BaseTunerLayer
            from peft.utils.other import AuxiliaryTrainingWrapper

            self._switches = [m for m in self.model.modules()
                              if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
        return self._switches

    def hidden_after(self, batch: dict, layers: int):
        """The hidden states after the first ``layers`` transformer layers (0: the token
        embeddings), computed by a forward pass of the base that stops there.

        Returns:
            A float tensor (batch, tokens, hidden).
        """
        if not 0 <= layers <= len(self.layers):
            raise UsageError(f"layer {layers} does not exist: the base has {len(self.layers)} "
                             f"layers (use 0..{len(self.layers)})")
        module = self.model.get_base_model().get_input_embeddings() if layers == 0 \
            else self.layers[layers - 1]
        output = self._base_pass_until(module, batch)
        hidden = output[0] if isinstance(output, tuple) else output
        return hidden.float()  # (batch, tokens, hidden)

    def run_until(self, batch: dict, layers: int) -> None:
        """A base forward pass that stops after ``layers`` layers (hooks read what they need)."""
        self._base_pass_until(self.layers[max(layers, 1) - 1], batch)

    def _base_pass_until(self, module, batch: dict):
        """Run the base on ``batch`` until ``module`` has computed; returns its output."""
        import torch

        captured = {}

        def stop(_module, _inputs, output):
            captured["output"] = output
            raise EarlyExit

        handle = module.register_forward_hook(stop)
        try:
            with torch.no_grad(), self.base_only(), contextlib.suppress(EarlyExit):
                self.model(**batch)
        finally:
            handle.remove()
        return captured["output"]

    def lora_layers(self) -> list:
        """``(module name, PEFT LoRA layer, layer index)`` of every LoRA target layer; the
        index is the transformer layer holding it (-1: outside the layers). Computed once."""
        if self._lora_layers is None:
            from peft.tuners.lora import LoraLayer

            index = {id(m): i for i, layer in enumerate(self.layers) for m in layer.modules()}
            self._lora_layers = [(name, module, index.get(id(module), -1))
                                 for name, module in self.model.get_base_model().named_modules()
                                 if isinstance(module, LoraLayer)]
        return self._lora_layers


def _library_task(library) -> str:
    from ..merge.lora_config import read_lora_config

    tasks = set()
    for adapter in library.adapters:
        config, _ = read_lora_config(adapter.directory)
        tasks.add("classification" if config.get("task_type") == "SEQ_CLS" else "causal_lm")
    if len(tasks) > 1:
        raise UsageError("the library mixes classification and language-model adapters: a router "
                         "works over adapters of one task; build one library per task")
    return tasks.pop()


def _adapter_labels(library) -> dict:
    """{adapter name: its id2label (labels.json), or None}."""
    from ..adapters.loading import read_labels

    return {a.name: read_labels(a.directory) for a in library.adapters}


def _attach_with_own_heads(base, library, labels: dict):
    """(PeftModel with every adapter attached without its head, the heads kept aside): for
    classifiers whose classes differ (see :mod:`._heads`)."""
    import tempfile

    from ._heads import AdapterHeads, strip_head

    heads, directories = {}, {}
    with tempfile.TemporaryDirectory(prefix="modelgit-heads-") as tmp:
        for index, adapter in enumerate(library.adapters):
            _check_files(adapter)
            directories[adapter.name] = os.path.join(tmp, str(index))
            heads[adapter.name] = strip_head(adapter.directory, directories[adapter.name])
        missing = sorted(name for name, parts in heads.items() if not parts or not labels.get(name))
        if missing:
            raise UsageError(f"classification adapter(s) {', '.join(missing)} carry no head or no "
                             "labels.json: a library of classifiers of different classes needs "
                             "both in every adapter (train them with `modelgit train`)")
        model = _attach_all(base, library, directories)
    return model, AdapterHeads(model.get_base_model(), heads, labels)


def _check_files(adapter) -> None:
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        if not os.path.isfile(os.path.join(adapter.directory, file)):
            raise UsageError(f"adapter {adapter.name!r}: {adapter.directory!r} has no {file} "
                             "(pickled adapters are never loaded)")


def _attach_all(base, library, directories: dict | None = None):
    """A PeftModel with every adapter of the library under its name (loaded from
    ``directories[name]`` when given: an adapter's copy without its head)."""
    from peft import PeftModel

    from ..adapters.loading import load_another_adapter

    model = None
    for adapter in library.adapters:
        _check_files(adapter)
        source = (directories or {}).get(adapter.name, adapter.directory)
        try:
            if model is None:
                model = PeftModel.from_pretrained(base, source, adapter_name=adapter.name,
                                                  is_trainable=False)
            else:
                load_another_adapter(model, source, adapter.name)
        except (RuntimeError, ValueError, KeyError) as exc:
            from ..adapters.loading import _short

            raise UsageError(f"adapter {adapter.name!r} ({adapter.directory}) does not fit the "
                             f"base {library.base_dir} ({_short(exc)})") from None
    return model


def _decoder_layers(model) -> list:
    """The model's transformer layers: the longest ``ModuleList`` whose length is the
    config's ``num_hidden_layers`` (Llama's ``model.layers``, BERT's ``encoder.layer``...)."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)
             and (count is None or len(m) == count)]
    if not lists:
        raise UsageError(f"cannot find the transformer layers of this {type(model).__name__}: "
                         "routers need a model with a list of num_hidden_layers layers")
    return list(max(lists, key=len))
