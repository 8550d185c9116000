"""The server's Prometheus metrics, in a registry of its own (two apps in one process do not
share counters)."""

from __future__ import annotations

__all__ = ["Metrics"]

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Counters and histograms of requests, tokens, batches, adapters and rollout variants."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("modelgit_requests", "Requests answered, by model, endpoint "
                                "and HTTP status", ["model", "endpoint", "status"], registry=r)
        self.errors = Counter("modelgit_errors", "Requests answered with an error, by type and "
                              "code", ["type", "code"], registry=r)
        self.tokens = Counter("modelgit_tokens", "Tokens read (prompt) and written (completion), "
                              "by model", ["model", "kind"], registry=r)
        self.latency = Histogram("modelgit_request_latency_seconds", "Time from a request's "
                                 "arrival to its last byte, by model and endpoint",
                                 ["model", "endpoint"], buckets=_LATENCY, registry=r)
        self.batch_size = Histogram("modelgit_batch_size", "Requests per model call, by task",
                                    ["task"], buckets=_SIZES, registry=r)
        self.batch_adapters = Histogram("modelgit_batch_adapters", "Distinct adapters (and the "
                                        "base) per model call", buckets=_SIZES, registry=r)
        self.queue_wait = Histogram("modelgit_queue_wait_seconds", "Time a request waited for "
                                    "its batch", buckets=_LATENCY, registry=r)
        self.adapters_loaded = Gauge("modelgit_adapters_loaded", "Adapters in memory", registry=r)
        self.adapter_events = Counter("modelgit_adapter_events", "Adapters loaded and evicted",
                                      ["event"], registry=r)
        self.rollout_requests = Counter("modelgit_rollout_requests", "Requests of a rollout, by "
                                        "variant and status", ["rollout", "variant", "status"],
                                        registry=r)
        self.rollout_latency = Histogram("modelgit_rollout_latency_seconds", "Latency of a "
                                         "rollout's requests, by variant", ["rollout", "variant"],
                                         buckets=_LATENCY, registry=r)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
