"""Serving: an OpenAI-compatible HTTP server over a release's base and adapter library.

:func:`create_app` builds the FastAPI application (``modelgit serve`` runs it with uvicorn):
``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` (streamed with server-sent
events), ``/v1/embeddings``, ``/v1/classify``, ``/health`` and ``/metrics``. Concurrent requests
for different adapters share one forward pass (PEFT's ``adapter_names``); adapters load on
demand and are evicted under an LRU bound; rollouts split a model name's traffic between
variants (served models, or other revisions of the repository, held as well). See README.md,
"Serving".
"""

from __future__ import annotations

from .._lazy import lazy_exports

# fastapi, torch and transformers load on first use (the CLI's parser imports this package)
_LAZY = {"create_app": "app", "ServeConfig": "config", "Rollout": "rollout",
         "parse_rollout": "rollout", "BackgroundServer": "server", "run": "server"}


__getattr__, __all__ = lazy_exports(__name__, _LAZY)
