"""Federated rounds on Flower: clients train the round's LoRA on data that never leaves them,
the server aggregates with modelgit's merge engine and commits every round as a revision.

``flwr`` is an optional dependency (``pip install 'modelgit[federated]'``); importing this package
switches Flower's telemetry off unless the environment already decided.
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from .best import best_round, round_history  # noqa: E402  (no flwr needed: reads commits)
from .config import AGGREGATORS, FederateConfig, all_methods  # noqa: E402

__all__ = ["AGGREGATORS", "FederateConfig", "all_methods", "best_round", "federate",
           "round_history"]


def federate(*args, **kwargs):
    """See :func:`modelgit.federate.run.federate` (imported lazily: it needs flwr)."""
    from .run import federate as run

    return run(*args, **kwargs)
