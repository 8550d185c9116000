"""`FederateConfig`: every setting of a federated run, typed, frozen, validated in one place.

The recipe part (:meth:`FederateConfig.recipe`) is what every round's commit records and what a
resumed run must match; the rest (where the repository is, who the clients are locally, how
long to wait) may change between the start and a resume.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field

from ..errors import UsageError

__all__ = ["AGGREGATORS", "FederateConfig", "all_methods", "check_method"]

#: aggregations of our own (the rest are the merge engine's methods, over full updates)
AGGREGATORS = {
    "fedavg": "FedAvg of the A and B factors, weighted by example counts",
    "fedavg_full": "FedAvg of the full updates B·A, re-factored to the round's rank (truncated SVD)",
    "median": "coordinate-wise median of the full updates (robust), re-factored",
    "trimmed_mean": "coordinate-wise mean of the full updates without the `trim` share at each "
                    "end (robust), re-factored",
}
_RUN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def all_methods() -> list[str]:
    """Every aggregation ``--method`` accepts: ours, then every registered merge method."""
    from ..merge.methods import METHODS

    return [*AGGREGATORS, *(m for m in sorted(METHODS) if m not in ("passthrough", "slerp",
                                                                      "model_stock"))]


def check_method(method: str) -> None:
    """Raise UsageError naming the closest valid method when ``method`` is unknown."""
    known = all_methods()
    if method not in known:
        close = difflib.get_close_matches(method, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"unknown aggregation method {method!r}{hint}; known: {', '.join(known)}")


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class FederateConfig:
    """One federated run: rounds of LoRA training on the clients, aggregated on the server."""

    repo: str = field(default=".", metadata={"help": "the model repository (its base model is "
                                             "what the clients adapt)", "positional": True})
    run: str = _opt("run", "the run's name: rounds are committed on branch fed/<run>")
    rounds: int = _opt(3, "rounds to reach (a resumed run continues up to this round)")
    method: str = _opt("fedavg", "aggregation: " + ", ".join(AGGREGATORS) + ", or a merge "
                       "method (ties, dare_ties, task_arithmetic, fisher...)")
    rank: int = _opt(8, "the LoRA rank of every round")
    alpha: float = _opt(16.0, "LoRA alpha")
    targets: tuple[str, ...] | None = _opt(None, "module names to adapt (default: per architecture)")
    steps: int = _opt(20, "optimizer steps per client per round")
    lr: float = _opt(2e-4, "clients' learning rate")
    server_lr: float = _opt(1.0, "server learning rate: the new global is start + server_lr x "
                            "(aggregate - start) (FedOpt's server SGD); the number of clients "
                            "gives the global the sum of the clients' steps, as far as a central "
                            "run on their union moves in the same number of steps")
    server_lr_decay: float = _opt(1.0, "multiply the server learning rate by this every round "
                                  "after the first server_lr_hold (1: constant): a large early "
                                  "step that settles instead of oscillating late in a run")
    server_lr_hold: int = _opt(1, "rounds at the full server learning rate before the decay "
                               "starts (round n > N uses server_lr x decay^(n-N)): fast "
                               "progress first, then a settling end")
    batch_size: int = _opt(4, "examples per step")
    max_length: int = _opt(256, "truncate examples to this many tokens")
    max_examples: int | None = _opt(None, "use only the first N examples of each client's data")
    seed: int = _opt(0, "seed of the initial adapter and the clients' data order")
    density: float = _opt(0.5, "density of TIES/DARE-style methods")
    trim: float = _opt(0.2, "share of clients trimmed at each end by trimmed_mean")
    min_clients: int = _opt(2, "a round with fewer accepted clients fails and commits nothing")
    outlier_k: float = _opt(3.0, "exclude updates whose norm is above median + k·MAD (0: off)")
    timeout: float = _opt(3600.0, "seconds to wait for the clients' replies in a round")
    fisher_examples: int = _opt(32, "examples each client uses for its Fisher estimate")
    suites: str | None = _opt(None, "the maintainer's held-out suites file: every round is "
                              "evaluated on it")
    start: str = _opt("HEAD", "revision whose base model the run adapts (a new run only)")
    threads: int | None = _opt(None, "CPU threads per client")
    stop_after: int | None = _opt(None, "stop after committing this round (a resumable stop)")

    def __post_init__(self):
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets",
                               tuple(t.strip() for t in self.targets.split(",") if t.strip()))
        elif self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def needs_fisher(self) -> bool:
        return self.method == "fisher"

    def problems(self) -> list[str]:
        """Every invalid setting, each as "what is wrong: what to do"."""
        out = []
        if not _RUN_RE.match(self.run):
            out.append(f"run {self.run!r} is not a valid name: letters, digits, '.', '_', '-' "
                       "(at most 64, starting with a letter or digit)")
        for name in ("rounds", "rank", "steps", "batch_size", "max_length", "min_clients",
                     "fisher_examples", "server_lr_hold"):
            if getattr(self, name) < 1:
                out.append(f"{name} is {getattr(self, name)}: it must be at least 1")
        for name in ("max_examples", "threads", "stop_after"):
            value = getattr(self, name)
            if value is not None and value < 1:
                out.append(f"{name} is {value}: it must be at least 1 (or left unset)")
        if self.alpha <= 0 or self.lr <= 0 or self.timeout <= 0:
            out.append("alpha, lr and timeout must be positive")
        if not 0 < self.server_lr <= 100:
            out.append(f"server_lr is {self.server_lr}: it must be in (0, 100] (1: plain FedAvg)")
        if not 0 < self.server_lr_decay <= 1:
            out.append(f"server_lr_decay is {self.server_lr_decay}: it must be in (0, 1] "
                       "(1: a constant server learning rate)")
        if not 0 < self.density <= 1:
            out.append(f"density is {self.density}: it must be in (0, 1]")
        if not 0 <= self.trim < 0.5:
            out.append(f"trim is {self.trim}: it must be in [0, 0.5)")
        if self.outlier_k < 0:
            out.append(f"outlier_k is {self.outlier_k}: it must be 0 (off) or positive")
        try:
            check_method(self.method)
        except UsageError as exc:
            out.append(str(exc))
        return out

    def validate(self) -> None:
        """Raise one UsageError listing every problem (see :meth:`problems`)."""
        problems = self.problems()
        if problems:
            raise UsageError("invalid federated settings:\n  " + "\n  ".join(problems))

    def recipe(self) -> dict:
        """The settings that define the run's model (a resume must keep them)."""
        keep = ("method", "rank", "alpha", "targets", "steps", "lr", "server_lr", "batch_size",
                "max_length", "max_examples", "seed", "density", "trim", "min_clients", "outlier_k",
                "fisher_examples")
        data = {k: v for k, v in asdict(self).items() if k in keep}
        data["targets"] = list(self.targets) if self.targets else None
        if self.server_lr_decay != 1.0:  # absent when constant: runs of before it resume
            data["server_lr_decay"] = self.server_lr_decay
        if self.server_lr_hold != 1 and self.server_lr_decay != 1.0:  # it only times the decay
            data["server_lr_hold"] = self.server_lr_hold
        return data

    def server_lr_at(self, server_round: int) -> float:
        """The server learning rate of round ``server_round`` (1-based)."""
        return self.server_lr * self.server_lr_decay ** max(0, server_round - self.server_lr_hold)
