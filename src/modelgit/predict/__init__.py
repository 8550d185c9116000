"""Batch predictions over Parquet, CSV or JSON Lines files, into Parquet: ``modelgit predict``.

:func:`predict` runs a job (resumable, memory bounded by one batch); :class:`BatchPredictor` is
the same per-batch function as a callable class for Ray Data's ``map_batches``. See README.md,
"Batch predictions".
"""

from __future__ import annotations

from .._lazy import lazy_exports

# torch and pyarrow load on first use (the CLI's parser imports this package)
_LAZY = {"predict": "run", "PredictRequest": "run", "PredictResult": "run",
         "output_schema": "run", "ModelChoice": "engine", "load_engine": "engine",
         "TASKS": "engine", "TaskSettings": "tasks", "predict_texts": "tasks",
         "BatchPredictor": "batch", "FORMATS": "inputs"}


__getattr__, __all__ = lazy_exports(__name__, _LAZY)
