"""``/healthz`` (the process answers), ``/readyz`` (broker and database reachable), ``/metrics``."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from esbhub.auth import Principal, require
from esbhub.db import engine_for

router = APIRouter(tags=["health"])
READY_TIMEOUT = 3.0


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


def _check_db(url: str) -> dict[str, Any]:
    try:
        with engine_for(url).connect() as c:
            c.execute(sa.text("SELECT 1"))
        return {"ok": True}
    except Exception as exc:  # noqa: BLE001 — any failure means "not ready"; readyz reports it
        return {"ok": False, "error": type(exc).__name__}


def _check_broker(broker: Any) -> dict[str, Any]:
    try:
        h = dict(broker.health())
    except Exception as exc:  # noqa: BLE001 — any failure means "not ready"; readyz reports it
        return {"ok": False, "error": type(exc).__name__}
    # health() is for operators; readyz shows only what a load balancer needs
    return {"ok": bool(h.get("ok")), "backend": h.get("backend"), **({"error": h["error"]} if h.get("error") else {})}


async def _bounded(fn: Any, *args: Any) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), READY_TIMEOUT)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {READY_TIMEOUT:g} s"}


@router.get("/readyz", summary="Readiness: broker and database reachable",
            responses={503: {"description": "Not ready; 'checks' says which part is down"}})
async def readyz(request: Request) -> Response:
    hub = request.app.state.hub
    broker, db = await asyncio.gather(
        _bounded(_check_broker, hub.broker), _bounded(_check_db, hub.settings.effective_database_url)
    )
    ok = broker["ok"] and db["ok"]
    body = {"status": "ready" if ok else "not_ready", "checks": {"broker": broker, "database": db}}
    return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json",
                     headers=None if ok else {"Retry-After": "5"})


@router.get("/metrics", summary="Prometheus metrics (needs the 'read' scope)", tags=["monitoring"])
async def metrics(_p: Principal = Depends(require("read"))) -> Response:
    from esbhub.monitoring.metrics import render

    data, ctype = await asyncio.to_thread(render)
    return Response(data, media_type=ctype)
