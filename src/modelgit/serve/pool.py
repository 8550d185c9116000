"""The base model and its adapters, loaded on demand into one PEFT model, least recently used
evicted first (``delete_adapter``) beyond a bound.

One thread (the engine's) calls it: loading, eviction and forward passes never overlap.
"""

from __future__ import annotations

import collections

from ..errors import UsageError

__all__ = ["AdapterPool", "PEFT_BASE"]

#: PEFT's name for "no adapter" in a mixed batch
PEFT_BASE = "__base__"


class AdapterPool:
    """The base model (float32, CPU), its tokenizer, and up to ``max_adapters`` adapters.

    Args:
        catalog: a :class:`~.catalog.Catalog`.
        max_adapters: the LRU bound.
        on_load, on_evict: called with an adapter's name when it is loaded / evicted.
    Raises:
        UsageError: the base cannot be loaded.
    """

    def __init__(self, catalog, max_adapters: int, on_load=None, on_evict=None):
        from ..adapters.loading import load_model, load_tokenizer, shared_pooling
        self.catalog, self.max_adapters = catalog, max_adapters
        self.tokenizer = load_tokenizer(catalog.base_dir)
        classifiers = catalog.library and catalog.task == "classification"
        labels = _shared_labels(catalog.library) if classifiers else None
        pooling = shared_pooling({a.name: a.directory for a in catalog.library.adapters}) \
            if classifiers else None
        self.model = load_model(catalog.base_dir, catalog.task, id2label=labels,
                                pad_token_id=self.tokenizer.pad_token_id, pooling=pooling)
        self._loaded: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._on_load, self._on_evict = on_load or (lambda n: None), on_evict or (lambda n: None)
        self._pending_eviction: str | None = None
        self.context = _context(self.model, self.tokenizer)

    @property
    def loaded(self) -> list[str]:
        """The loaded adapters, least recently used first."""
        return list(self._loaded)

    def ensure(self, names) -> dict[str, str]:
        """Load the adapters ``names`` (at most ``max_adapters``), evicting the least recently
        used others first; mark them used.

        Returns:
            ``{name: error message}`` of the adapters that could not be loaded.
        """
        wanted = [n for n in dict.fromkeys(names) if n is not None]
        if len(wanted) > self.max_adapters:
            raise UsageError(f"{len(wanted)} adapters in one batch; the bound is "
                             f"{self.max_adapters}")
        failed = {}
        for name in wanted:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                continue
            self._evict_for(wanted)
            try:
                self._load(name)
            except Exception as exc:  # noqa: BLE001 - one adapter's failure is its requests' only
                self._forget(name)
                failed[name] = (f"adapter {name!r} could not be loaded "
                                f"({type(exc).__name__}: {str(exc)[:300]})")
        return failed

    def _forget(self, name: str) -> None:
        """Remove what a failed load left behind (PEFT registers the name before the weights)."""
        import warnings

        config = getattr(self.model, "peft_config", {})
        if name in config and len(config) > 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model.delete_adapter(name)

    def _evict_for(self, keep) -> None:
        while len(self._loaded) >= self.max_adapters:
            victim = next((n for n in self._loaded if n not in keep), None)
            if victim is None:
                return
            # PEFT needs one adapter left in a PeftModel: the new one is loaded first when the
            # bound is 1 (see _load), so the last one is deleted after it
            if len(self._loaded) == 1:
                self._pending_eviction = victim
                return
            self._delete(victim)

    def _delete(self, victim: str) -> None:
        import warnings

        del self._loaded[victim]
        with warnings.catch_warnings():  # "adapter X was active...": mixed batches name theirs
            warnings.simplefilter("ignore")
            self.model.delete_adapter(victim)
        self._on_evict(victim)

    def _load(self, name: str) -> None:
        import os

        from peft import PeftModel

        from ..adapters.loading import load_another_adapter, quiet_transformers

        directory = self.catalog.adapters[name]
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            if not os.path.isfile(os.path.join(directory, file)):
                raise UsageError(f"{directory!r} has no {file} (pickled adapters are never loaded)")
        _check_weights(os.path.join(directory, "adapter_model.safetensors"))
        with quiet_transformers():
            if isinstance(self.model, PeftModel):
                load_another_adapter(self.model, directory, name)
            else:
                self.model = PeftModel.from_pretrained(self.model, directory, adapter_name=name,
                                                       is_trainable=False)
        self.model.eval()
        self._loaded[name] = None
        self._on_load(name)
        victim = self._pending_eviction
        if victim is not None:
            self._pending_eviction = None
            self._delete(victim)

    def adapter_kwargs(self, names: list) -> dict:
        """The keyword arguments running a batch whose rows use ``names`` (None: the base)."""
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            return {}  # no adapter was ever loaded: the plain base
        return {"adapter_names": [n if n is not None else PEFT_BASE for n in names]}


def _check_weights(path: str) -> None:
    """Read the safetensors header before PEFT changes the model: a damaged file is refused
    with the model untouched (PEFT injects an adapter's layers before it reads its weights)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise UsageError(f"{path} is not a readable safetensors file ({exc})") from None


def _context(model, tokenizer) -> int:
    """The model's context in tokens (the smaller of the config's and the tokenizer's)."""
    config = getattr(model, "config", None)
    limits = [getattr(config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, (int, float)) and 0 < x < 1_000_000]
    return min(limits) if limits else 2048


def _shared_labels(library) -> dict | None:
    """The classes the library's classifiers share (one head serves them all).

    Raises:
        UsageError: adapters that name different classes (a router's model gives each its own
            head; a served model keeps one).
    """
    from ..route._runtime import _adapter_labels

    found = {name: labels for name, labels in _adapter_labels(library).items() if labels}
    if len({tuple(sorted(labels.items())) for labels in found.values()}) > 1:
        raise UsageError("the classification adapters name different classes ("
                         + "; ".join(f"{n}: {', '.join(map(str, l.values()))}"
                                     for n, l in sorted(found.items()))
                         + "): serve adapters of one task (one label set) per server")
    return next(iter(found.values()), None)

