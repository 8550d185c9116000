"""Routing: send each input to the specialist adapter (or mix, or the base) that fits it.

A :class:`Library` is a base model and LoRA adapters trained on it; a router (kinds ``arrow``,
``examples``, ``reviews``) decides per input; :class:`RoutedModel` scores, generates and
classifies with those decisions; :func:`evaluate_routers` compares routers with the base, each
adapter alone and the oracle. See README.md, "Routing".
"""

from __future__ import annotations

from .._lazy import lazy_exports

# torch/transformers load on first use (the CLI's parser imports this package)
_LAZY = {"BASE": "library", "Library": "library", "LibraryAdapter": "library",
         "Router": "router", "RouterSpec": "router", "Decision": "router",
         "BuildRequest": "router", "KINDS": "router", "MODES": "router",
         "RoutedModel": "model", "TextScore": "model", "Classification": "model",
         "build_router": "model", "load": "model", "save": "model",
         "load_router": "files", "save_router": "files",
         "evaluate_routers": "evaluate", "format_report": "evaluate",
         "read_texts": "texts"}


__getattr__, __all__ = lazy_exports(__name__, _LAZY)
