"""The server's settings: one frozen value, checked as a whole (every problem reported at once)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError

__all__ = ["ServeConfig"]


@dataclass(frozen=True)
class ServeConfig:
    """How the server batches, caches adapters and splits traffic.

    Attributes:
        batch_window_ms: how long the first request of a batch waits for others (0: no wait;
            requests that arrive while a batch runs still join the next one).
        max_batch: the most requests in one forward pass / generate call.
        max_adapters: the most adapters loaded at once (least recently used evicted first).
        max_tokens_limit: the largest ``max_tokens`` accepted (default: the model's context).
        max_inputs: the most inputs in one embeddings or classify request.
        max_body_bytes: the largest request body accepted.
        rollouts: :class:`~.rollout.Rollout` values (model names splitting traffic).
        sticky_header: the request header whose value pins a client to one rollout variant.
        seed: seeds the variant choice of requests without that header (reproducible splits).
        threads: torch's threads (None: chosen from a full batch's size and the machine's load,
            as ``train`` and ``eval`` do; ``MODELGIT_THREADS`` overrides).
    """

    batch_window_ms: float = 5.0
    max_batch: int = 16
    max_adapters: int = 8
    max_tokens_limit: int | None = None
    max_inputs: int = 256
    max_body_bytes: int = 4 * 1024 * 1024
    rollouts: tuple = field(default_factory=tuple)
    sticky_header: str = "x-modelgit-user"
    seed: int = 0
    threads: int | None = None

    def __post_init__(self):
        problems = []
        if not isinstance(self.batch_window_ms, (int, float)) or not 0 <= self.batch_window_ms <= 3_600_000:
            problems.append(f"batch_window_ms is {self.batch_window_ms!r}: give 0 to 3600000 ms")
        for name, low, high in (("max_batch", 1, 4096), ("max_adapters", 1, 4096),
                                ("max_inputs", 1, 100_000), ("max_body_bytes", 1024, 1 << 30)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                problems.append(f"{name} is {value!r}: give an integer from {low} to {high}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            problems.append(f"threads is {self.threads!r}: give a positive integer or None")
        limit = self.max_tokens_limit
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            problems.append(f"max_tokens_limit is {limit!r}: give a positive integer or None")
        names = [r.name for r in self.rollouts]
        if len(set(names)) != len(names):
            problems.append(f"rollouts name a model twice ({', '.join(names)}): one rollout per name")
        if problems:
            raise UsageError("serve settings: " + "; ".join(problems))
