"""``party.golden.*`` events: what CRM, portals and the call centre subscribe to.

One event per new version of a golden record:

* ``party.golden.created.v1``  — a new golden id
* ``party.golden.updated.v1``  — attributes or members changed
* ``party.golden.merged.v1``   — golden records were merged: the survivor (``merged_ids`` lists
  the ids it absorbed) and each absorbed id (``status="retired"``, ``merged_into`` = survivor)
* ``party.golden.unmerged.v1`` — source records were split off a golden record: the golden it
  was split from (``split_into``) and each golden that received them (``unmerged_from``; a
  golden id that had been retired by the merge comes back with its old id)

Ordering contract: ``seq`` is the golden record's version number — it starts at 1 and grows
by exactly 1 per version of that golden id (also in headers ``golden_id`` / ``golden_seq``).
Every event carries the complete golden snapshot, so a consumer keeps, per golden id, the
highest ``seq`` it applied and ignores an event with a lower or equal ``seq`` (a redelivery
or an overtaken message); a jump of more than 1 means it missed versions, which is harmless
for state (the snapshot is complete) and visible through ``GET /v1/customers/{id}/history``.

What the MDM guarantees on its side: each golden id's events are *published* in commit order —
the first publication of ``seq`` n+1 never comes before that of ``seq`` n — whoever wrote
them (the real-time consumer, a steward action through the API, ``esbhub mdm load`` /
``rematch``), in one process or several, on SQLite or PostgreSQL. Every MDM writer that makes
events holds the MDM publication lock (:mod:`esbhub.mdm.publication`) from before its
transaction until its events are on the bus; events that cannot go out then (broker down) wait
in the MDM outbox, in commit order, and whoever publishes next sends them before its own
(steward actions and rematch always go through the outbox). The events of one transaction go
out in ``seq`` order per golden id.

What a consumer can still see, and the rule above absorbs:

* a duplicate — the same event id and ``seq`` again, possibly after later versions: a
  redelivered ``party.v1`` message's events are published again (they come back from the MDM
  inbox), and an outbox row whose publish was confirmed but not yet recorded goes out again;
* a late first publication: if the process dies between a batch's commit and its publish (or
  neither the broker nor the database can take the batch's events then), that batch's events
  reach the bus only when the bus redelivers its messages — after any later version another
  writer published meanwhile. The lock cannot cover this case: a batch's events are kept in
  the inbox, not the outbox, so the real-time path writes no extra row per transaction;
* reordering after the bus: several consumer threads, prefetch and redelivery reorder what one
  queue received in order.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from esbhub.bus.envelope import Envelope
from esbhub.schemas import register_schema

CHANGE_TYPES = {
    "created": "party.golden.created.v1",
    "updated": "party.golden.updated.v1",
    "merged": "party.golden.merged.v1",
    "unmerged": "party.golden.unmerged.v1",
}


class GoldenEvent(BaseModel):
    """Payload of every ``party.golden.*.v1`` event: the golden record as of version ``seq``."""

    model_config = ConfigDict(extra="forbid")

    golden_id: str = Field(description="The golden id this event is about.")
    seq: int = Field(ge=1, description="Version of this golden record; +1 per version, ordered per golden id.")
    change: Literal["created", "updated", "merged", "unmerged"] = Field(description="What happened.")
    status: Literal["active", "retired", "inactive"] = Field(description="active; retired (merged into another); "
                                                             "inactive (every source record deleted).")
    merged_into: str | None = Field(default=None, description="For a retired golden: the survivor's golden id.")
    merged_ids: list[str] = Field(default_factory=list, description="For the survivor of a merge: ids absorbed.")
    split_into: list[str] = Field(default_factory=list, description="For an unmerge: goldens that took members.")
    unmerged_from: str | None = Field(default=None, description="For an unmerge: the golden split from.")
    valid_from: str = Field(description="When this version became current (ISO 8601).")
    actor: str = Field(description="'engine' or the steward who decided.")
    reason: str | None = Field(default=None, description="Why (steward's reason, or the engine's cause).")
    source_keys: list[str] = Field(default_factory=list, description="Member source keys 'system:id'.")
    attributes: dict[str, Any] = Field(default_factory=dict, description="Golden values: {attr: {value, lineage}}.")
    tier: str | None = Field(default=None, description="Key-account tier from billing revenue.")


for _t in CHANGE_TYPES.values():
    register_schema(_t, GoldenEvent)


def golden_event(payload: GoldenEvent, *, cause: Envelope | None = None, cause_id: str | None = None) -> Envelope:
    """The envelope of one golden event, derived from the message that caused it if any."""
    typ = CHANGE_TYPES[payload.change]
    # the attributes are JSON already (survived from stored JSON, overrides from JSON): taken as
    # they are rather than walked value by value again; the body keeps the model's field order
    rest = payload.model_dump(mode="json", exclude={"attributes"})
    body = {k: (payload.attributes if k == "attributes" else rest[k]) for k in GoldenEvent.model_fields}
    headers = {"golden_id": payload.golden_id, "golden_seq": str(payload.seq)}
    if cause is not None:
        return cause.derive(typ, body, source="mdm", headers=headers)
    return Envelope.create(typ, body, source="mdm", causation_id=cause_id, headers=headers)
