"""Helpers of the serving tests (tests/serve)."""

from __future__ import annotations


def metric(text: str, name: str, **labels) -> float:
    """The value of a sample in Prometheus' text format (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
