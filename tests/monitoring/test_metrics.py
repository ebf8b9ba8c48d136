"""Metrics: the hub_* names other parts rely on, and multiprocess aggregation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from esbhub.monitoring import metrics

NAMES = [
    "hub_messages_accepted_total", "hub_messages_delivered_total", "hub_messages_retried_total",
    "hub_messages_dead_lettered_total", "hub_late_replies_total", "hub_publish_seconds", "hub_handler_seconds",
]


def test_render_exposes_every_contract_metric():
    metrics.MESSAGES_ACCEPTED.labels(type="party.v1").inc()
    metrics.HANDLER_SECONDS.labels(subscription="crm").observe(0.01)
    body, ctype = metrics.render()
    text = body.decode()
    assert ctype.startswith("text/plain")
    for name in NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert 'hub_messages_accepted_total{type="party.v1"}' in text


CHILD = """
from esbhub.monitoring import metrics
metrics.MESSAGES_DELIVERED.labels(subscription="billing").inc({n})
metrics.LATE_REPLIES.inc()
"""


def test_counters_of_worker_processes_add_up_in_multiprocess_mode(tmp_path: Path):
    d = tmp_path / "prom"
    d.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(d)}
    for n in (3, 4):
        subprocess.run([sys.executable, "-c", CHILD.format(n=n)], env=env, check=True, timeout=60)
    out = subprocess.run(
        [sys.executable, "-c", "from esbhub.monitoring import metrics; print(metrics.render()[0].decode())"],
        env=env, check=True, timeout=60, capture_output=True, text=True,
    ).stdout
    assert 'hub_messages_delivered_total{subscription="billing"} 7.0' in out
    assert "hub_late_replies_total 2.0" in out
