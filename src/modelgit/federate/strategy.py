"""`ModelgitStrategy`: a Flower strategy whose aggregation is modelgit's.

It subclasses Flower's message-based :class:`flwr.serverapp.strategy.Strategy`: ``configure_train``
sends every connected node the round's global LoRA and settings, ``aggregate_train`` screens the
replies (:mod:`.screen`) and aggregates the accepted ones (:mod:`.aggregate`). Evaluation is the
maintainer's, on the server (held-out suites never leave it), so the client-side evaluation
phase sends nothing. The last round's :class:`RoundReport` is kept for the round's commit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from logging import getLogger

from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from ..errors import UsageError
from .aggregate import aggregate
from .config import FederateConfig
from .payload import array_bytes, arrays_to_lora, lora_to_arrays
from .screen import Exclusion, Expectations, screen_replies

__all__ = ["ModelgitStrategy", "RoundFailed", "RoundReport", "round_settings"]

_LOG = getLogger("modelgit.federate")


class RoundFailed(UsageError):
    """A round had fewer accepted clients than the run's minimum: nothing is committed."""


@dataclass(frozen=True)
class RoundReport:
    """What one round did: who took part (anonymous ids), who was excluded and why, bytes."""

    round: int
    participants: tuple[dict, ...]  # {"client", "examples", "bytes_up", "update_norm"}
    excluded: tuple[Exclusion, ...]
    bytes_down: int
    bytes_up: int

    def to_dict(self) -> dict:
        return {"round": self.round, "participants": list(self.participants),
                "excluded": [{"client": e.client, "reason": e.reason} for e in self.excluded],
                "bytes": {"down": self.bytes_down, "up": self.bytes_up}}


def round_settings(config: FederateConfig, server_round: int, fingerprint: str) -> dict:
    """The ConfigRecord every client gets: what to train, and on which base.

    The seed is the run's and ``data-offset`` the steps of the earlier rounds, so that a client's
    rounds walk one shuffled order of its data, epoch after epoch, as one local run of
    ``rounds · steps`` steps (or a central run on the union) does: a fresh order every round
    would draw the first ``steps · batch`` examples of a new permutation each time, some twice
    and others never."""
    return {"server-round": server_round, "steps": config.steps, "lr": config.lr,
            "batch-size": config.batch_size, "max-length": config.max_length,
            "max-examples": config.max_examples or 0, "seed": config.seed,
            "data-offset": (server_round - 1) * config.steps,
            "rank": config.rank, "alpha": config.alpha, "fingerprint": fingerprint,
            "fisher": config.needs_fisher, "fisher-examples": config.fisher_examples,
            "threads": config.threads or 0}


def anonymizer(salt: str):
    """node id -> ``c-<10 hex>``: stable within a run, meaningless without the run's salt."""
    def anonymize(node: int) -> str:
        return "c-" + hashlib.sha256(f"{salt}:{node}".encode()).hexdigest()[:10]
    return anonymize


class ModelgitStrategy(Strategy):
    """Round configuration and aggregation for one run (see the module docstring)."""

    def __init__(self, config: FederateConfig, fingerprint: str, salt: str):
        self.config = config
        self.fingerprint = fingerprint
        self.anonymize = anonymizer(salt)
        self.report: RoundReport | None = None
        self._sent: list[int] = []
        self._start = None
        self._bytes_down = 0

    def configure_train(self, server_round, arrays, config, grid):
        nodes = sorted(grid.get_node_ids())
        settings = {**dict(config), **round_settings(self.config, server_round, self.fingerprint)}
        record = RecordDict({"arrays": arrays, "config": ConfigRecord(settings)})
        self._sent, self._start = nodes, arrays_to_lora(arrays)
        self._bytes_down = array_bytes(arrays) * len(nodes)
        _LOG.info("round %d: sending the global LoRA to %d clients", server_round, len(nodes))
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=node)
                for node in nodes]

    def aggregate_train(self, server_round, replies):
        """Screen and aggregate; raise :class:`RoundFailed` below the minimum of clients."""
        cfg = self.config
        expect = Expectations(self._start, self.fingerprint, cfg.needs_fisher, cfg.outlier_k)
        screened = screen_replies(self._sent, list(replies), expect, self.anonymize)
        accepted = screened.updates
        self.report = RoundReport(
            server_round,
            tuple({"client": u.client, "examples": u.examples,
                   "bytes_up": screened.bytes_up[u.client],
                   "update_norm": round(screened.norms[u.client], 6)} for u in accepted),
            screened.excluded, self._bytes_down, sum(screened.bytes_up.values()))
        if len(accepted) < cfg.min_clients:
            reasons = "; ".join(f"{e.client}: {e.reason}" for e in screened.excluded) or "none"
            raise RoundFailed(f"round {server_round} has {len(accepted)} accepted client(s) of "
                              f"{len(self._sent)} sent, below the minimum of {cfg.min_clients} "
                              f"(excluded: {reasons}); nothing was committed: fix or add clients, "
                              f"or lower --min-clients, and run again to resume")
        merged = aggregate(cfg.method, self._start, list(accepted), rank=cfg.rank, alpha=cfg.alpha,
                           density=cfg.density, trim=cfg.trim, seed=cfg.seed + server_round,
                           server_lr=cfg.server_lr_at(server_round))
        examples = sum(u.examples for u in accepted)
        return lora_to_arrays(merged), MetricRecord({"clients": len(accepted),
                                                     "examples": examples})

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []  # evaluation is the maintainer's, on the server: see the module docstring

    def aggregate_evaluate(self, server_round, replies):
        return None

    def summary(self) -> None:
        cfg = self.config
        _LOG.info("ModelgitStrategy: method %s, server lr %g (x %g a round after round %d), "
                  "rank %d, min %d clients, outlier k %g", cfg.method, cfg.server_lr,
                  cfg.server_lr_decay, cfg.server_lr_hold, cfg.rank, cfg.min_clients,
                  cfg.outlier_k)

