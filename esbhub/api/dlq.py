"""The dead-letter store over HTTP: list/filter, show, edit payload, replay, discard.

Reading needs the ``read`` scope, changing needs ``admin``; every change is audited
(:func:`esbhub.auth.audit`). Replay by filter runs in the background at a bounded rate
and is followed under ``/v1/dlq/jobs/{id}``.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from esbhub.api.errors import ApiError
from esbhub.api.ingest import check_content_type, parse_json
from esbhub.auth import Principal, audit, require
from esbhub.errors import ErrorDetail, InvalidMessage
from esbhub.logging import get_logger
from esbhub.schemas import SCHEMAS, validate_payload

router = APIRouter(prefix="/v1/dlq", tags=["dead letters"])
log = get_logger("esbhub.api")

Status = Literal["dead", "replayed", "discarded", "all"]


class DlqFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subscription: str | None = Field(default=None, description="Route / subscription name.")
    type: str | None = Field(default=None, description="Message type, e.g. 'payment.v1'.")
    error_type: str | None = Field(default=None, description="Exception class name, e.g. 'PermanentError'.")
    since: datetime | None = Field(default=None, description="Dead-lettered at or after (ISO 8601).")
    until: datetime | None = Field(default=None, description="Dead-lettered before (ISO 8601).")
    status: Status = Field(default="dead", description="dead (default), replayed, discarded or all.")

    def as_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = Field(default=None, max_length=10_000, description="Dead letters to replay.")
    filter: DlqFilter | None = Field(default=None, description="Replay every dead letter matching this filter.")
    rate_per_s: float | None = Field(default=None, gt=0, le=100_000, description="Republish at most this many per second.")

    @model_validator(mode="after")
    def _one_of(self) -> ReplayRequest:
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give exactly one of 'ids' or 'filter'")
        return self


class DiscardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1, max_length=10_000, description="Dead letters to discard.")
    reason: str = Field(default="", max_length=1000, description="Why (kept with the record).")


def _not_found(dlq_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no dead letter with id '{dlq_id}'",
                    [ErrorDetail(loc="path.dlq_id", msg="unknown id", type="not_found")])


def _type_of(item: dict[str, Any]) -> str | None:
    env = item.get("envelope")
    if isinstance(env, dict) and env.get("type"):
        return env["type"]
    return item.get("type")


@router.get("", summary="List dead letters (filter, page)")
async def list_dead_letters(
    request: Request,
    subscription: str | None = None,
    type: str | None = None,
    error_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    status: Status = "dead",
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    _p: Principal = Depends(require("read")),
) -> dict[str, Any]:
    store = request.app.state.hub.store
    f = DlqFilter(subscription=subscription, type=type, error_type=error_type, since=since, until=until, status=status)
    items = await asyncio.to_thread(lambda: store.dlq_list(**f.as_kwargs(), limit=limit, offset=offset))
    return {"items": items, "limit": limit, "offset": offset}


@router.get("/jobs/{job_id}", summary="Progress of a background replay")
async def get_job(job_id: str, request: Request, _p: Principal = Depends(require("read"))) -> dict[str, Any]:
    job = request.app.state.hub.jobs.get(job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no replay job '{job_id}' in this API process")
    return job


@router.get("/{dlq_id}", summary="One dead letter: original envelope, error, attempts, edits")
async def show_dead_letter(dlq_id: str, request: Request, _p: Principal = Depends(require("read"))) -> dict[str, Any]:
    item = await asyncio.to_thread(request.app.state.hub.store.dlq_get, dlq_id)
    if item is None:
        raise _not_found(dlq_id)
    return item


@router.put(
    "/{dlq_id}/payload",
    summary="Replace the payload of a dead letter (the original is kept)",
    description="The body is the new payload. It is validated against the message type's schema "
    "unless `validate=false`.",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}},
)
async def edit_dead_letter(
    dlq_id: str,
    request: Request,
    validate: bool = Query(True, description="Check the new payload against the type's schema."),
    p: Principal = Depends(require("admin")),
) -> dict[str, Any]:
    store = request.app.state.hub.store
    check_content_type(request)
    payload = parse_json(await request.body())
    item = await asyncio.to_thread(store.dlq_get, dlq_id)
    if item is None:
        raise _not_found(dlq_id)
    t = _type_of(item)
    if validate and t in SCHEMAS:
        try:
            payload = validate_payload(t, payload)
        except InvalidMessage as exc:
            raise ApiError(422, "schema_violation", exc.message, exc.details) from None
    try:
        result = await asyncio.to_thread(lambda: store.dlq_edit(dlq_id, payload, editor=p.actor))
    except KeyError:
        raise _not_found(dlq_id) from None
    except ValueError as exc:  # not 'dead' any more (replayed / discarded), or no envelope to edit
        raise ApiError(409, "conflict", str(exc)) from None
    audit(p, "dead_letter_edited", dlq_id)
    return result


@router.post("/{dlq_id}/replay", summary="Republish one dead letter to its subscription queue")
async def replay_one(dlq_id: str, request: Request, p: Principal = Depends(require("admin"))) -> dict[str, Any]:
    hub = request.app.state.hub
    if await asyncio.to_thread(hub.store.dlq_get, dlq_id) is None:
        raise _not_found(dlq_id)
    n = await asyncio.to_thread(lambda: hub.store.dlq_replay(hub.broker, [dlq_id], by=p.actor))
    audit(p, "dead_letters_replayed", dlq_id, count=n)
    return {"replayed": n}


@router.delete("/{dlq_id}", summary="Discard one dead letter (kept as 'discarded' with the reason)")
async def discard_one(
    dlq_id: str, request: Request, reason: str = Query("", max_length=1000), p: Principal = Depends(require("admin"))
) -> dict[str, Any]:
    store = request.app.state.hub.store
    n = await asyncio.to_thread(lambda: store.dlq_discard([dlq_id], by=p.actor, reason=reason))
    if not n:
        raise _not_found(dlq_id)
    audit(p, "dead_letters_discarded", dlq_id, count=n, reason=reason)
    return {"discarded": n}


@router.post(
    "/replay",
    summary="Replay by ids (answers with the count) or by filter (background job, 202)",
    responses={202: {"description": "Replay by filter started; follow it at /v1/dlq/jobs/{job}"}},
)
async def replay_many(body: ReplayRequest, request: Request, p: Principal = Depends(require("admin"))) -> Any:
    hub = request.app.state.hub
    if body.ids is not None:
        n = await asyncio.to_thread(
            lambda: hub.store.dlq_replay(hub.broker, body.ids, rate_per_s=body.rate_per_s, by=p.actor)
        )
        audit(p, "dead_letters_replayed", ",".join(body.ids[:20]), count=n)
        return {"replayed": n}
    assert body.filter is not None
    flt = body.filter.as_kwargs()
    job_id = uuid.uuid4().hex[:12]
    job: dict[str, Any] = {"id": job_id, "state": "running", "filter": body.filter.model_dump(mode="json"),
                           "rate_per_s": body.rate_per_s, "replayed": None, "error": None,
                           "started_at": datetime.now(UTC).isoformat(), "by": p.actor}
    hub.jobs[job_id] = job

    def run() -> None:
        try:
            job["replayed"] = hub.store.dlq_replay(hub.broker, None, filter=flt, rate_per_s=body.rate_per_s, by=p.actor)
            job["state"] = "done"
        except Exception as exc:  # noqa: BLE001 — reported on the job; the operator re-runs it
            job["state"] = "failed"
            job["error"] = f"{type(exc).__name__}: {exc}"
            log.error("dead_letter_replay_failed", job=job_id, error=job["error"])
        job["finished_at"] = datetime.now(UTC).isoformat()
        audit(p, "dead_letters_replayed", f"filter:{job_id}", count=job["replayed"], state=job["state"])

    threading.Thread(target=run, name=f"dlq-replay-{job_id}", daemon=True).start()
    from starlette.responses import JSONResponse

    return JSONResponse(job, status_code=202, headers={"Location": f"/v1/dlq/jobs/{job_id}"})


@router.post("/discard", summary="Discard dead letters by ids")
async def discard_many(body: DiscardRequest, request: Request, p: Principal = Depends(require("admin"))) -> dict[str, Any]:
    store = request.app.state.hub.store
    n = await asyncio.to_thread(lambda: store.dlq_discard(body.ids, by=p.actor, reason=body.reason))
    audit(p, "dead_letters_discarded", ",".join(body.ids[:20]), count=n, reason=body.reason)
    return {"discarded": n}
