"""Watching the hub: Prometheus metrics (``metrics``), health, traces, dashboard."""
