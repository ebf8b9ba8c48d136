"""The MDM's bus consumer: ``party.v1`` → golden records → ``party.golden.*`` events, micro-batched.

One subscription (queue ``route.<mdm.queue>`` of the hub settings, by default ``route.mdm``;
concurrency 1 — MDM writers are serialized anyway) on the worker's micro-batch contract
(:mod:`esbhub.bus.worker`, "Micro-batched handlers"): the worker hands over the ``party.v1``
deliveries already waiting, at most ``batch_max``, and they go
through :meth:`MdmService.ingest_many` in ONE transaction. Nothing waits for a batch to fill: at
low load a batch is one record (same latency as one ``ingest`` per message); under load the
per-transaction cost (~20 SQL statements, the commit, the writer lock) is shared by the batch.

Per message, the guarantees of the per-message path hold:

* a payload that is not a valid ``party.v1`` fails alone (``InvalidMessage`` → dead letter with
  its reason); the rest of the batch is ingested;
* if the batch transaction fails (a record the pipeline cannot take, the database), the worker
  runs each message alone through ``ingest`` (a batch of one), so the poison record takes the
  retry → dead-letter path and its neighbours are ingested;
* the events of a batch are published in the order :meth:`MdmService.ingest_many` returned them
  (in ``seq`` order per golden id), each through the context of the message that caused it, so
  their ids are stable across redelivery (a redelivered message's events come back from the MDM
  inbox with the same ids); the ``party.golden.*`` events are durably on the bus before any
  message of the batch is acked;
* idempotency is the MDM's own (its inbox of envelope ids), so the subscription does not use
  the bus dedup table (``dedup=False``), as before.

Throughput and latency at 1M golden records: ``bench/mdm_realtime.py`` and docs/benchmarks.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import structlog

from esbhub.bus.envelope import Envelope
from esbhub.bus.worker import HandlerContext, Subscription
from esbhub.errors import InvalidMessage
from esbhub.mdm.service import MdmService, service_for
from esbhub.schemas.party import Party

log = structlog.get_logger("esbhub.mdm.realtime")

BATCH_MAX = 200
"""Most records per MDM transaction. ``ingest_many`` of 200 records costs ~1/5 of 200 single
transactions on this machine and keeps one batch well under a second at 1M golden records."""


OUTBOX_SWEEP_S = 2.0
"""At most how often the consumer publishes steward events left in the MDM outbox. The API
publishes a steward action's events right after it commits; the outbox keeps them only when the
broker was down then. Looking after every batch cost a transaction per batch — at low load one
per record (~0.3 ms on SQLite, ~0.6 ms on PostgreSQL)."""


def _party(env: Envelope) -> Party:
    try:
        return Party.model_validate(env.payload)
    except Exception as exc:  # noqa: BLE001 - any validation failure is bad input
        raise InvalidMessage(f"party.v1 payload invalid: {exc}") from exc


def _publish_pending(svc: MdmService, broker: Any) -> None:
    try:
        svc.publish_pending(broker)  # steward events whose publish failed earlier
    except Exception as exc:  # noqa: BLE001 - they stay in the outbox; the next batch retries
        log.warning("mdm_outbox_publish_failed", error_type=type(exc).__name__, error=str(exc))


def subscriptions(settings: Any, broker: Any, *, batch_max: int = BATCH_MAX,
                  outbox_sweep_s: float = OUTBOX_SWEEP_S) -> list[Subscription]:
    """The MDM's subscription. ``batch_max=1`` turns batching off (one transaction per record).
    After a batch, steward events left in the outbox are published if the last look was
    ``outbox_sweep_s`` or longer ago (the first batch always looks)."""
    swept = [float("-inf")]

    def handle_batch(items: Sequence[tuple[Envelope, HandlerContext]]) -> None:
        svc = service_for(settings)
        good: list[tuple[Party, Envelope, HandlerContext]] = []
        for env, ctx in items:
            try:
                good.append((_party(env), env, ctx))
            except InvalidMessage as exc:
                ctx.fail(exc)
        if good:
            events = svc.ingest_many([(p, env.id, env) for p, env, _ctx in good])
            by_id = {env.id: ctx for _p, env, ctx in good}
            first = good[0][2]
            for ev in events:
                by_id.get(ev.causation_id or "", first).publish(ev)
        now = time.monotonic()
        if now - swept[0] >= outbox_sweep_s:
            swept[0] = now
            _publish_pending(svc, broker)

    def handle(env: Envelope, ctx: HandlerContext) -> None:
        handle_batch([(env, ctx)])  # a batch of one = MdmService.ingest; a failure raises or is ctx.error

    return [Subscription(name=settings.mdm.queue, binding_keys=["party.v1"], handler=handle, dedup=False,
                         concurrency=1, batch_handler=handle_batch, batch_max=batch_max)]
