"""Prometheus metrics of the hub, one definition per metric, shared by every process.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``serve`` with worker processes), prometheus_client
keeps the values in per-process files in that directory and :func:`registry` aggregates
them with a ``MultiProcessCollector``; without it, the default in-process registry is used.

Names (the contract other parts rely on)::

    hub_messages_accepted_total{type}
    hub_messages_delivered_total{subscription}
    hub_messages_retried_total{subscription}
    hub_messages_dead_lettered_total{subscription,error_type}
    hub_messages_duplicate_total{subscription}     (redeliveries skipped by dedup)
    hub_dead_letters_replayed_total{subscription}
    hub_late_replies_total
    hub_publish_seconds
    hub_handler_seconds{subscription}
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

MESSAGES_ACCEPTED = Counter("hub_messages_accepted", "Messages accepted by the hub (stored durably).", ["type"])
MESSAGES_DELIVERED = Counter(
    "hub_messages_delivered", "Messages a subscription handled successfully (acked).", ["subscription"]
)
MESSAGES_RETRIED = Counter(
    "hub_messages_retried", "Failed deliveries scheduled for another attempt after a backoff delay.", ["subscription"]
)
MESSAGES_DEAD_LETTERED = Counter(
    "hub_messages_dead_lettered",
    "Messages moved to the dead-letter store, by subscription and error type.",
    ["subscription", "error_type"],
)
MESSAGES_DUPLICATE = Counter(
    "hub_messages_duplicate",
    "Deliveries skipped because the subscription already processed that message id (dedup).",
    ["subscription"],
)
DEAD_LETTERS_REPLAYED = Counter(
    "hub_dead_letters_replayed", "Dead letters republished to their subscription queue.", ["subscription"]
)
LATE_REPLIES = Counter("hub_late_replies", "Replies that arrived for a timed-out or unknown request (discarded).")
PUBLISH_SECONDS = Histogram(
    "hub_publish_seconds", "Time to store a batch of messages durably in the broker.", buckets=_LATENCY_BUCKETS
)
HANDLER_SECONDS = Histogram(
    "hub_handler_seconds", "Time a subscription's handler took per message.", ["subscription"], buckets=_LATENCY_BUCKETS
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def registry() -> CollectorRegistry:
    """The registry to expose: aggregated over processes when multiprocess mode is on."""
    d = multiprocess_dir()
    if not d:
        return REGISTRY
    from prometheus_client import multiprocess

    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg, path=d)
    return reg


def render() -> tuple[bytes, str]:
    """The exposition text and its content type, for a ``/metrics`` endpoint."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Call from the parent when a worker process exits (multiprocess mode housekeeping)."""
    d = multiprocess_dir()
    if d:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, d)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of one sample in this process (0 if absent); for tests and the dashboard."""
    v = REGISTRY.get_sample_value(name, labels or {})
    return float(v or 0.0)
