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
* the events of a batch are published by :meth:`MdmService.ingest_many` itself, inside the
  handler, right after the batch's commit and under the MDM's publication lock
  (:mod:`esbhub.mdm.publication`): events committed before — steward actions' events still in
  the outbox, in this process or another — go out first, and nobody publishes events committed
  after until these are out. So the bus sees each golden id's versions in commit order
  (:mod:`esbhub.mdm.events`, "Ordering contract");
* the ``party.golden.*`` events are durably on the bus (``publish_many``) before the handler
  returns, so before any message of the batch is acked. If they cannot be published the
  handler raises (the batch is committed; its events wait in the MDM outbox, in order) and the
  messages take the worker's failure path; a redelivered message's events come back from the
  MDM inbox with the same ids, so a re-publish is a duplicate consumers drop;
* idempotency is the MDM's own (its inbox of envelope ids), so the subscription does not use
  the bus dedup table (``dedup=False``), as before.

Throughput and latency at 1M golden records: ``bench/mdm_realtime.py`` and docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from esbhub.bus.envelope import Envelope
from esbhub.bus.worker import HandlerContext, Subscription
from esbhub.errors import InvalidMessage
from esbhub.mdm.service import service_for
from esbhub.schemas.party import Party

BATCH_MAX = 200
"""Most records per MDM transaction. ``ingest_many`` of 200 records costs ~1/5 of 200 single
transactions on this machine and keeps one batch well under a second at 1M golden records."""


def _party(env: Envelope) -> Party:
    try:
        return Party.model_validate(env.payload)
    except Exception as exc:  # noqa: BLE001 - any validation failure is bad input
        raise InvalidMessage(f"party.v1 payload invalid: {exc}") from exc


def subscriptions(settings: Any, broker: Any, *, batch_max: int = BATCH_MAX) -> list[Subscription]:
    """The MDM's subscription. ``batch_max=1`` turns batching off (one transaction per record).
    Events left in the MDM outbox (a steward action's when the broker was down) go out with the
    next batch, before its own: the transaction's writer-row update says whether there are any,
    so a batch without them costs nothing more."""
    timeout = getattr(settings, "publish_timeout", None)

    def publish(events: list[Envelope]) -> None:
        broker.publish_many(events, timeout=timeout)

    services: list[Any] = []  # the process's MDM service, looked up at the first batch (not per message)

    def handle_batch(items: Sequence[tuple[Envelope, HandlerContext]]) -> None:
        if not services:
            services.append(service_for(settings))
        svc = services[0]
        good: list[tuple[Party, Envelope]] = []
        for env, ctx in items:
            try:
                good.append((_party(env), env))
            except InvalidMessage as exc:
                ctx.fail(exc)
        if good:  # published here, in commit order, not through ctx.publish after the handler
            svc.ingest_many([(p, env.id, env) for p, env in good], publish=publish)

    def handle(env: Envelope, ctx: HandlerContext) -> None:
        handle_batch([(env, ctx)])  # a batch of one = MdmService.ingest; a failure raises or is ctx.error

    return [Subscription(name=settings.mdm.queue, binding_keys=["party.v1"], handler=handle, dedup=False,
                         concurrency=1, batch_handler=handle_batch, batch_max=batch_max)]
