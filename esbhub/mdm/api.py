"""HTTP API of the MDM: the 360° customer view, search, xref, history, the steward queue and the audit trail.

Read calls need the ``read`` scope, steward actions (decide, merge, unmerge, override) and the
review queue the ``steward`` scope (``admin`` implies both). The audit trail
(``GET /v1/steward/audit``) is a read: an auditor must be able to review the stewards' actions
without the power to merge or unmerge, and it shows no more than a record's history, which ``read``
already shows (each version's actor, reason and attributes, overrides included). A merge or a "same" decision that contradicts a standing "not the same" or a hard
cannot-link rule (two different valid USCCs, a branch and its head office, …) is a 409 whose
message names the rule and the two records; nothing is changed. Every steward action is audited twice: in the MDM's own ``mdm_audit`` table (who,
when, why, what it changed) and through :func:`esbhub.auth.audit`. Events of steward actions
go through the MDM outbox and are published to the bus right after the action commits; if the
broker is down they stay pending (``events_pending`` in the answer) and go out later — before
any later event of the MDM, whoever publishes it (:mod:`esbhub.mdm.events`, ordering).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, field_validator

from esbhub.api.errors import ApiError
from esbhub.auth import Principal, audit, require
from esbhub.bus.envelope import Envelope
from esbhub.errors import ErrorDetail, InvalidMessage
from esbhub.logging import get_logger
from esbhub.mdm.service import Conflict, InvalidOverride, MdmService, NotFound, service_for
from esbhub.mdm.store import as_utc, check_source_key

log = get_logger("esbhub.mdm.api")
router = APIRouter(tags=["customers (MDM)"])


def mdm(request: Request) -> MdmService:
    svc = getattr(request.app.state, "mdm", None)
    if svc is None:
        svc = request.app.state.mdm = service_for(request.app.state.settings)
    return svc


class DecideBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    same: bool = Field(description="true: the two records are the same customer; false: they are not.")
    reason: str | None = Field(default=None, max_length=2000, description="Why (kept in the audit trail).")


class MergeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: str = Field(min_length=1, max_length=200,
                   description="Golden id or source key 'system:id' (its golden id survives if it is the older).")
    b: str = Field(min_length=1, max_length=200, description="Golden id or source key 'system:id'.")
    reason: str | None = Field(default=None, max_length=2000, description="Why (kept in the audit trail).")


SourceKey = Annotated[str, AfterValidator(check_source_key)]
"""A source key 'system:id' (its form checked; whether it exists is the service's to say)."""


class UnmergeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source_keys: list[SourceKey] = Field(min_length=1,
                                         description="Source keys 'system:id' to split off the golden record.")
    reason: str | None = Field(default=None, max_length=2000, description="Why (kept in the audit trail).")


MAX_OVERRIDE_BYTES = 16_384


class OverrideBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: JsonValue = Field(description="The value that wins for this golden record whatever the sources say: a "
                                         "list for a list attribute (phones, emails, circuit_ids, contacts, "
                                         "addresses), else a string, number or boolean.")
    reason: str | None = Field(default=None, max_length=2000, description="Why (kept in the audit trail).")

    @field_validator("value")
    @classmethod
    def _some_value(cls, v: Any) -> Any:
        if v is None:
            raise ValueError("null is not a value: DELETE the override to remove it")
        if len(orjson.dumps(v)) > MAX_OVERRIDE_BYTES:
            raise ValueError(f"longer than {MAX_OVERRIDE_BYTES} bytes as JSON")
        return v


ATTRIBUTE = Path(pattern=r"^[a-z][a-z0-9_]*(\.[A-Za-z0-9_\-]+)?$", max_length=64,
                 description="A golden attribute (name, address, phones, …) or extra.<name>.")


def _not_found(exc: NotFound, loc: str) -> ApiError:
    """404 naming what was not found (``loc``: the path parameter or body field that named it,
    ``body.<field>`` when the service says which argument it was)."""
    msg = str(exc.args[0] if exc.args else exc)
    if exc.field is not None and loc.startswith("body"):
        loc = f"body.{exc.field}"
    return ApiError(404, "not_found", msg, [ErrorDetail(loc=loc, msg=msg, type="not_found")])


def _invalid(exc: InvalidMessage, prefix: str) -> ApiError:
    """422 of the service's :class:`InvalidMessage`, its details' ``loc`` under ``prefix`` (e.g.
    ``source_keys.1`` → ``body.source_keys.1``)."""
    details = [ErrorDetail(loc=f"{prefix}.{d.loc}", msg=d.msg, type=d.type) for d in exc.details]
    return ApiError(422, "invalid_request", exc.message, details or [ErrorDetail(loc=prefix, msg=exc.message)])


def _publish(request: Request, svc: MdmService) -> int:
    """Publish pending steward events; the number still pending afterwards."""
    hub = getattr(request.app.state, "hub", None)
    broker = getattr(hub, "broker", None)
    if broker is not None:
        try:
            svc.publish_pending(broker)
        except Exception as exc:  # noqa: BLE001 - events stay in the outbox and go out later; said in the answer
            log.warning("mdm_outbox_publish_failed", error_type=type(exc).__name__, error=str(exc))
    return svc.pending_events()


def _steward_answer(request: Request, svc: MdmService, events: list[Envelope]) -> dict[str, Any]:
    return {
        "events": [{"id": e.id, "type": e.type, "golden_id": e.payload["golden_id"], "seq": e.payload["seq"],
                    "change": e.payload["change"]} for e in events],
        "events_pending": _publish(request, svc),
    }


@router.get("/v1/customers", summary="Search customers by name (fuzzy), USCC, phone, billing account or source key")
def search(
    q: str = Query(min_length=1, max_length=200, description="Name, USCC, phone, billing account or 'system:id'."),
    limit: int = Query(default=20, ge=1, le=200),
    svc: MdmService = Depends(mdm),
    _p: Principal = Depends(require("read")),
) -> dict[str, Any]:
    # would find nothing: say why rather than answer an empty list
    _blank(q, "q", "only spaces: give a name, USCC, phone, billing account or 'system:id'")
    return {"q": q, "results": svc.search(q, limit=limit)}


@router.get("/v1/customers/{golden_id}", summary="360° view of one customer")
def customer(golden_id: str, svc: MdmService = Depends(mdm), _p: Principal = Depends(require("read"))) -> dict[str, Any]:
    try:
        return svc.get_customer(golden_id)
    except NotFound as exc:
        raise _not_found(exc, "path.golden_id") from None


@router.get("/v1/customers/{golden_id}/history", summary="Every version of a golden record, or the one valid at as_of")
def history(
    golden_id: str,
    as_of: datetime | None = Query(default=None, description="ISO 8601 time: the version valid then."),
    svc: MdmService = Depends(mdm),
    _p: Principal = Depends(require("read")),
) -> dict[str, Any]:
    try:
        if as_of is not None:
            version = svc.as_of(golden_id, as_of)
            if version is None:
                msg = f"{golden_id} did not exist at {as_of.isoformat()}"
                raise ApiError(404, "not_found", msg, [ErrorDetail(loc="query.as_of", msg=msg, type="not_found")])
            return {"golden_id": golden_id, "as_of": as_of.isoformat(), "version": version}
        return {"golden_id": golden_id, "versions": svc.history(golden_id)}
    except NotFound as exc:
        raise _not_found(exc, "path.golden_id") from None


@router.get("/v1/xref/{source_system}/{source_id}", summary="Golden id of a source key")
def xref(source_system: str, source_id: str, svc: MdmService = Depends(mdm),
         _p: Principal = Depends(require("read"))) -> dict[str, Any]:
    try:
        return svc.xref(source_system, source_id)
    except NotFound as exc:
        raise _not_found(exc, "path.source_id") from None


@router.get("/v1/steward/tasks", summary="The steward review queue")
def tasks(
    status: str = Query(default="open", pattern="^(open|decided|obsolete|all)$"),
    limit: int = Query(default=100, ge=1, le=1000),
    offset: int = Query(default=0, ge=0),
    svc: MdmService = Depends(mdm),
    _p: Principal = Depends(require("steward")),
) -> dict[str, Any]:
    return {"tasks": svc.tasks(None if status == "all" else status, limit=limit, offset=offset)}


AUDIT_PAGE_MAX = 500

AuditAction = Literal["decide", "merge", "unmerge", "override", "rematch"]


def _blank(value: str | None, field: str, msg: str = "only spaces: leave it out, or give a value") -> None:
    """422 naming ``query.<field>`` when a query value is nothing but spaces."""
    if value is not None and not value.strip():
        raise ApiError(422, "invalid_request", "the request is not valid", [ErrorDetail(
            loc=f"query.{field}", msg=msg, type="string_too_short")])


@router.get("/v1/steward/audit", summary="The MDM audit trail: steward actions and rematches, newest first")
def audit_trail(
    target: str | None = Query(default=None, min_length=1, max_length=300,
                               description="Entries that touched this golden id (a retired one too), source key "
                                           "'system:id', 'task:<id>', or '*' (a rematch)."),
    actor: str | None = Query(default=None, min_length=1, max_length=100,
                              description="Entries of this actor, as the entries show it: 'key:<key id>:<name>' for an "
                                          "API key, 'engine' for a rematch."),
    action: AuditAction | None = Query(default=None, description="Entries of this action."),
    since: datetime | None = Query(default=None, description="At or after this time (ISO 8601; without a zone: UTC)."),
    until: datetime | None = Query(default=None, description="Before this time (ISO 8601; without a zone: UTC)."),
    limit: int = Query(default=100, ge=1, le=AUDIT_PAGE_MAX),
    cursor: int | None = Query(default=None, ge=1, description="The next_cursor of the previous page."),
    svc: MdmService = Depends(mdm),
    _p: Principal = Depends(require("read")),
) -> dict[str, Any]:
    """Pages by ``cursor`` — the id of the last entry of the previous page — not by offset: entries
    written while a reviewer pages (newest first) would shift an offset, showing entries twice;
    the page after an id is the same whatever is written meanwhile."""
    _blank(target, "target")
    _blank(actor, "actor")
    if since is not None and until is not None and as_utc(until) <= as_utc(since):
        msg = f"{until.isoformat()} is not after since ({since.isoformat()}): no entry could be in that range"
        raise ApiError(422, "invalid_request", "the request is not valid",
                       [ErrorDetail(loc="query.until", msg=msg, type="value_error")])
    entries = svc.audit(limit + 1, target=target, actor=actor, action=action, since=since, until=until, before=cursor)
    more = len(entries) > limit
    entries = entries[:limit]
    return {"entries": entries, "limit": limit, "next_cursor": entries[-1]["id"] if more else None}


@router.get("/v1/steward/tasks/{task_id}", summary="One review task: per-field evidence and both records side by side")
def task(task_id: int, svc: MdmService = Depends(mdm), _p: Principal = Depends(require("steward"))) -> dict[str, Any]:
    try:
        return svc.task(task_id)
    except NotFound as exc:
        raise _not_found(exc, "path.task_id") from None


@router.post("/v1/steward/tasks/{task_id}/decide", summary="Decide a review task: same customer or not")
def decide(task_id: int, body: DecideBody, request: Request, svc: MdmService = Depends(mdm),
           p: Principal = Depends(require("steward"))) -> dict[str, Any]:
    try:
        events = svc.decide(task_id, body.same, by=p.actor, reason=body.reason)
    except NotFound as exc:
        raise _not_found(exc, "path.task_id") from None
    except Conflict as exc:
        raise ApiError(409, "conflict", exc.message) from None
    audit(p, "mdm_decide", f"task:{task_id}", same=body.same)
    return _steward_answer(request, svc, events)


@router.post("/v1/customers/merge", summary="Merge two customers (steward)")
def merge(body: MergeBody, request: Request, svc: MdmService = Depends(mdm),
          p: Principal = Depends(require("steward"))) -> dict[str, Any]:
    try:
        events = svc.merge(body.a, body.b, by=p.actor, reason=body.reason)
    except NotFound as exc:
        raise _not_found(exc, "body") from None
    except Conflict as exc:
        raise ApiError(409, "conflict", exc.message) from None
    audit(p, "mdm_merge", f"{body.a}+{body.b}")
    return _steward_answer(request, svc, events)


@router.post("/v1/customers/{golden_id}/unmerge", summary="Split source records off a customer (steward)")
def unmerge(golden_id: str, body: UnmergeBody, request: Request, svc: MdmService = Depends(mdm),
            p: Principal = Depends(require("steward"))) -> dict[str, Any]:
    try:
        events = svc.unmerge(golden_id, body.source_keys, by=p.actor, reason=body.reason)
    except NotFound as exc:
        raise _not_found(exc, "path.golden_id") from None
    except InvalidMessage as exc:
        raise _invalid(exc, "body") from None
    audit(p, "mdm_unmerge", golden_id, source_keys=body.source_keys)
    return _steward_answer(request, svc, events)


def _override(golden_id: str, attribute: str, value: Any, reason: str | None, request: Request, svc: MdmService,
              p: Principal) -> dict[str, Any]:
    try:
        events = svc.override(golden_id, attribute, value, by=p.actor, reason=reason)
    except NotFound as exc:
        raise _not_found(exc, "path.golden_id") from None
    except InvalidOverride as exc:
        loc = "body.value" if exc.field == "value" else "path.attribute"
        raise ApiError(422, "invalid_request", str(exc), [{"loc": loc, "msg": str(exc), "type": "value_error"}]) from None
    audit(p, "mdm_override", f"{golden_id}.{attribute}", removed=value is None)
    return _steward_answer(request, svc, events)


@router.put("/v1/customers/{golden_id}/overrides/{attribute}",
            summary="Set a steward's value for one attribute of a customer: it wins over every source (steward)")
def set_override(body: OverrideBody, request: Request, golden_id: str, attribute: str = ATTRIBUTE,
                 svc: MdmService = Depends(mdm), p: Principal = Depends(require("steward"))) -> dict[str, Any]:
    return _override(golden_id, attribute, body.value, body.reason, request, svc, p)


@router.delete("/v1/customers/{golden_id}/overrides/{attribute}",
               summary="Remove a steward's value: the attribute survives from the sources again (steward)")
def remove_override(request: Request, golden_id: str, attribute: str = ATTRIBUTE,
                    reason: str | None = Query(default=None, max_length=2000, description="Why (kept in the audit trail)."),
                    svc: MdmService = Depends(mdm), p: Principal = Depends(require("steward"))) -> dict[str, Any]:
    return _override(golden_id, attribute, None, reason, request, svc, p)
