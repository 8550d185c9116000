"""A base model with its adapter library and a router: it scores, generates and classifies,
each input with the adapter (or mix of adapters, or base) the router picks for it.

Hard routing runs a batch with PEFT's mixed-adapter batches (``adapter_names``: each input its
own adapter, ``__base__`` for the base); soft routing with :class:`~.mixing.SoftMixer`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ..errors import FormatError, UsageError
from ..untrusted import dumps_json, load_json_file, text_problem
from .files import check_against, load_router, save_router
from .library import BASE, Library
from .router import BuildRequest, Decision, Router, kind_module

__all__ = ["RoutedModel", "TextScore", "Classification", "build_router", "load", "save",
           "LIBRARY_FILE"]

#: written beside a router by `modelgit route build`: where its library's directories are
LIBRARY_FILE = "library.json"
_MAX_LIBRARY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class TextScore:
    """A text's mean negative log-likelihood per predicted token (nats), its perplexity, the
    number of predicted tokens, and where it was routed."""

    nll: float
    perplexity: float
    tokens: int
    decision: Decision


@dataclass(frozen=True)
class Classification:
    """The class a routed classifier gives a text, its probability, and the routing."""

    label: str
    label_id: int
    probability: float
    decision: Decision


def build_router(library: Library, request: BuildRequest, runtime=None) -> Router:
    """Build a router of ``request.kind`` over ``library``.

    Raises:
        UsageError: see each kind's ``build`` (unknown kind: naming the kinds).
    """
    module = kind_module(request.kind)
    from ._runtime import Runtime

    return module.build(runtime or Runtime(library), request)


def save(router: Router, directory: str, library: Library | None = None,
         overwrite: bool = False) -> str:
    """Write the router directory; with ``library``, also ``library.json`` (its local base and
    adapter directories), so that :func:`load` needs nothing else."""
    save_router(router, directory, overwrite)
    if library is not None:
        record = {"base": library.base_dir,
                  "adapters": [{"name": a.name, "path": a.directory, "domain": a.domain}
                               for a in library.adapters]}
        path = os.path.join(directory, LIBRARY_FILE)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(dumps_json(record))
        os.replace(path + ".tmp", path)
    return directory


def _library_record(directory: str) -> Library:
    path = os.path.join(directory, LIBRARY_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"{directory!r} holds a router but no {LIBRARY_FILE}: pass the library "
                         "(load(dir, library=Library.from_dirs(base, {name: dir})))")
    data = load_json_file(path, path, _MAX_LIBRARY_BYTES, 4)
    entries = data.get("adapters") if isinstance(data, dict) else None
    if not isinstance(entries, list) or text_problem(data.get("base"), "base", 4096) or any(
            not isinstance(e, dict) or text_problem(e.get("path"), "path", 4096) for e in entries):
        raise FormatError(f"{path}: expected {{\"base\": DIR, \"adapters\": [{{\"name\", "
                          "\"path\", \"domain\"}]}")
    return Library.from_dirs(data["base"], [(e.get("name"), e["path"]) for e in entries],
                             domains={e.get("name"): e.get("domain") for e in entries})


def load(source: str, rev: str | None = None, library: Library | None = None,
         mode: str | None = None, top_k: int | None = None,
         threshold: float | None | str = "keep", max_length: int | None = None) -> "RoutedModel":
    """A :class:`RoutedModel` from a router directory, or from a release of a model repository.

    Args:
        source: a directory written by ``modelgit route build`` (router.json,
            router.safetensors, and library.json unless ``library`` is given); or a model
            repository (a clone: its release ``rev``'s library and router, see
            :func:`~.release_library.load_release`).
        rev: the release (tag or commit) of a repository; None: its newest release.
        library: the adapters the router works over (default: the directory's library.json).
        mode, top_k, threshold: override the router's settings (``threshold=None``: never
            the base).
        max_length: the longest input in tokens (default: the model's context).
    Raises:
        FormatError: a damaged or hostile router file.
        UsageError: a router built for another base, or naming an adapter the library lacks.
    """
    from .release_library import is_repository

    if rev is not None or (library is None and is_repository(source)):
        from .release_library import load_release

        return load_release(source, rev, mode=mode, top_k=top_k, threshold=threshold,
                            max_length=max_length)
    router = load_router(source)
    library = library or _library_record(source)
    router = Router(router.spec.with_overrides(mode=mode, top_k=top_k, threshold=threshold),
                    router.tensors)
    return RoutedModel(router, library, max_length=max_length, where=f"the router {source}")


class RoutedModel:
    """A library's base and adapters behind a router.

    Args:
        router: a :class:`~.router.Router`; library: its :class:`~.library.Library`.
        max_length: the longest input in tokens (default: the model's context).
    Raises:
        UsageError: the router does not fit the library (see :func:`.files.check_against`).
    """

    def __init__(self, router: Router, library: Library, max_length: int | None = None,
                 where: str = "the router", runtime=None):
        from ._runtime import Runtime

        check_against(router, library, where)
        self.router, self.library = router, library
        self.runtime = runtime or Runtime(library, max_length=max_length)
        self._kind = kind_module(router.spec.kind)
        _check_sizes(router, self.runtime, where)

    @property
    def spec(self):
        return self.router.spec

    def with_settings(self, mode: str | None = None, top_k: int | None = None,
                      threshold: float | None | str = "keep") -> "RoutedModel":
        """The same router with other settings, sharing this one's loaded model."""
        router = Router(self.spec.with_overrides(mode=mode, top_k=top_k, threshold=threshold),
                        self.router.tensors)
        return RoutedModel(router, self.library, runtime=self.runtime)

    def route(self, texts: list[str]) -> list[Decision]:
        """Where each text goes (see :class:`~.router.Decision`)."""
        from .router import decide

        texts = _texts(texts)
        if not texts:
            return []
        return decide(self._kind.scores(self.router, self.runtime, texts), self.router.spec)

    # ------------------------------------------------------------------ running
    def _run(self, batch: dict, decisions: list[Decision], method: str = "forward", **kwargs):
        import torch

        from ._runtime import PEFT_BASE
        from .mixing import SoftMixer

        model = self.runtime.model
        with torch.no_grad():
            if all(len(d.weights) <= 1 and all(w == 1.0 for w in d.weights.values())
                   for d in decisions):
                names = [next(iter(d.weights)) if d.weights else PEFT_BASE for d in decisions]
                return getattr(model, method)(**batch, adapter_names=names, **kwargs)
            names = self.router.spec.adapter_names
            weights = [[d.weights.get(n, 0.0) for n in names] for d in decisions]
            with SoftMixer(self.runtime, names).mixing(weights):
                return getattr(model, method)(**batch, **kwargs)

    def score(self, texts: list[str], batch_size: int = 8,
              decisions: list[Decision] | None = None,
              max_length: int | None = None) -> list[TextScore]:
        """Per-text mean NLL and perplexity with routing (texts over the model's context are
        truncated, with one warning).

        Args:
            decisions: use these instead of the router's (e.g. one adapter for all texts).
            max_length: cut texts to this many tokens (at most the context; an evaluation
                suite's ``max_length``), silently: only the context's cut warns.
        Raises:
            UsageError: not a language model library.
        """
        import torch

        self._need("causal_lm", "score")
        texts = _texts(texts)
        decisions = decisions or self.route(texts)
        out, encoded = [], []
        for start in range(0, len(texts), batch_size):
            chunk = self.runtime.encode(texts[start:start + batch_size], max_length)
            encoded.append(chunk)
            part = decisions[start:start + batch_size]
            logits = self._run(chunk.batch, part).logits.float()  # (b, t, vocab)
            targets = chunk.batch["input_ids"][:, 1:]  # (b, t-1)
            mask = chunk.batch["attention_mask"][:, 1:].bool()  # (b, t-1)
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets,
                                                    reduction="none")  # (b, t-1)
            for row, decision in enumerate(part):
                count = int(mask[row].sum())
                mean = float(nll[row][mask[row]].double().sum()) / count if count else math.nan
                out.append(TextScore(mean, math.exp(mean) if count else math.nan, count, decision))
        if max_length is None or max_length > self.runtime.max_length:
            self.runtime.warn_truncated(encoded)
        return out

    def generate(self, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
        """Greedy continuations of ``prompts`` (the new text only), each with its routing.
        A prompt longer than the context less ``max_new_tokens`` is cut to its first tokens,
        with one warning."""
        self._need("causal_lm", "generate")
        prompts = _texts(prompts)
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens < self.runtime.max_length:
            raise UsageError(f"max_new_tokens is {max_new_tokens!r}: it must be between 1 and "
                             f"{self.runtime.max_length - 1} (the model's context)")
        decisions = self.route(prompts)
        tokenizer = self.runtime.tokenizer
        tokenizer.padding_side = "left"  # generation continues from the last position
        try:
            chunk = self.runtime.encode(prompts, self.runtime.max_length - max_new_tokens)
        finally:
            tokenizer.padding_side = "right"
        self.runtime.warn_truncated([chunk], "prompt")
        output = self._run(chunk.batch, decisions, "generate", max_new_tokens=max_new_tokens,
                           do_sample=False, pad_token_id=tokenizer.pad_token_id)
        start = chunk.batch["input_ids"].shape[1]
        return [tokenizer.decode(row[start:], skip_special_tokens=True) for row in output]

    def classify(self, texts: list[str], batch_size: int = 16,
                 decisions: list[Decision] | None = None,
                 max_length: int | None = None) -> list[Classification]:
        """The class of each text from the adapter it is routed to (each classification adapter
        has its own head: a soft decision uses its top adapter's). Texts over the context are
        truncated, with one warning.

        Args:
            decisions, max_length: as for :meth:`score`.
        """
        import torch

        self._need("classification", "classify")
        texts = _texts(texts)
        decisions = [d if len(d.weights) <= 1 else Decision(d.adapter, d.confidence,
                                                             {d.adapter: 1.0}, d.scores)
                     for d in (decisions or self.route(texts))]
        id2label = self.runtime.model.get_base_model().config.id2label
        own = self.runtime.adapter_labels  # each adapter's classes name its predictions
        heads = self.runtime.heads  # adapters of different classes: each row gets its own head
        out, encoded = [], []
        for start in range(0, len(texts), batch_size):
            chunk = self.runtime.encode(texts[start:start + batch_size], max_length)
            encoded.append(chunk)
            part = decisions[start:start + batch_size]
            if heads is not None:
                heads.rows = [d.adapter if d.adapter in own else None for d in part]
            try:
                probs = torch.softmax(self._run(chunk.batch, part).logits.float(), -1)  # (b, classes)
            finally:
                if heads is not None:
                    heads.rows = None
            for row, decision in enumerate(part):
                best = int(probs[row].argmax())
                names = own.get(decision.adapter) or id2label
                out.append(Classification(str(names.get(best, best)), best,
                                          float(probs[row, best]), decision))
        if max_length is None or max_length > self.runtime.max_length:
            self.runtime.warn_truncated(encoded)
        return out

    def _need(self, task: str, what: str) -> None:
        if self.runtime.task != task:
            other = "classify" if task == "causal_lm" else "score or generate"
            raise UsageError(f"{what} needs {task} adapters; this library holds "
                             f"{self.runtime.task} adapters: use {other}")


def _texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise UsageError(f"input {bad[0]} is a {type(texts[bad[0]]).__name__}, not a string")
    return texts


def _check_sizes(router: Router, runtime, where: str) -> None:
    """Refuse tensors whose sizes do not fit this base (a router of another architecture)."""
    spec = router.spec
    if spec.kind == "arrow":
        layers = {name: module for name, module, _ in runtime.lora_layers()}
        for index, name in enumerate(spec.settings["modules"]):
            module = layers.get(name)
            size = router.tensors[f"directions.{index}"].shape[2]
            if module is None or module.in_features != size:
                raise UsageError(f"{where} scores layer {name!r} with inputs of size {size}, which "
                                 "this base does not have: build it again for this library")
        if spec.settings["layers"] > len(runtime.layers):
            raise UsageError(f"{where} reads {spec.settings['layers']} layers; the base has "
                             f"{len(runtime.layers)}")
        return
    from .embed import embedding_size, parse_embedder

    kind, layer = parse_embedder(spec.embedder)
    if kind == "base" and layer > len(runtime.layers):
        raise UsageError(f"{where} embeds with layer {layer}; the base has {len(runtime.layers)}")
    expected, size = embedding_size(spec.embedder, runtime), router.tensors["center"].shape[0]
    if size != expected:
        raise UsageError(f"{where} holds embeddings of size {size}, but its embedder "
                         f"{spec.embedder} gives {expected} with this base: build it again")
