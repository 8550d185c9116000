"""The merge methods, one module per method or family; importing this package registers them all.

Each module registers its functions in :data:`modelgit.merge.base.METHODS` with
:func:`modelgit.merge.base.register`; the contract they follow is in :mod:`modelgit.merge.base`.
The registry's names are re-exported here for callers of the former single-file module.
"""

from __future__ import annotations

from ..base import METHODS, MergeInputs, MergeMethod, get_method, register
from . import fisher_weighted, linear, model_stock, passthrough, slerp, task_arithmetic  # noqa: F401  (registers)

__all__ = ["METHODS", "MergeInputs", "MergeMethod", "get_method", "register"]
