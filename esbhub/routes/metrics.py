"""Prometheus counters of the route engine (same registry/multiprocess setup as esbhub.monitoring.metrics)::

    hub_route_filtered_total{route}          messages dropped by a filter / code step / idempotency key
    hub_route_split_empty_total{route}       inputs whose split list was empty (nothing emitted)
    hub_route_aggregate_held_total{route}    inputs held in an open aggregation group
    hub_route_aggregates_timed_out_total{route}
    hub_route_reloads_total{route}           version swaps in this worker
    hub_route_changes_refused_total{via}     invalid changes refused (api, cli, files)
"""

from __future__ import annotations

from prometheus_client import Counter

FILTERED = Counter("hub_route_filtered", "Messages a route dropped (filter, code step, duplicate business key).", ["route"])
SPLIT_EMPTY = Counter("hub_route_split_empty", "Inputs whose split produced no message (empty list).", ["route"])
AGGREGATE_HELD = Counter("hub_route_aggregate_held", "Inputs added to an aggregation group that is not complete yet.", ["route"])
AGGREGATE_TIMED_OUT = Counter("hub_route_aggregates_timed_out", "Aggregation groups completed by their timeout.", ["route"])
RELOADS = Counter("hub_route_reloads", "Route version swaps in this worker process.", ["route"])
CHANGES_REFUSED = Counter("hub_route_changes_refused", "Route changes refused because they did not validate.", ["via"])
