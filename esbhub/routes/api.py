"""HTTP API of the route engine (mounted by ``esbhub.api.app`` when importable).

``GET /v1/routes`` · ``GET /v1/routes/{name}`` (active version + history) ·
``GET /v1/routes/{name}/versions/{version}`` · ``PUT /v1/routes/{name}`` (YAML body; validated
first, refused with file:line errors, else stored as a new version that workers swap to) ·
``POST /v1/routes/{name}/pause|resume|rollback`` · ``DELETE /v1/routes/{name}`` (workers drain
its queues, then stop it; the version history stays, with who deleted it and when; a rollback
brings it back).
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from esbhub.api.errors import ApiError
from esbhub.auth import require
from esbhub.routes.runtime import apply_text
from esbhub.routes.store import DELETE_ACTION, RouteStore

router = APIRouter(prefix="/v1/routes", tags=["routes"])
_lock = threading.Lock()


def _store(request: Request) -> RouteStore:
    st = getattr(request.app.state, "route_store", None)
    if st is None:
        with _lock:
            st = getattr(request.app.state, "route_store", None)
            if st is None:
                from sqlalchemy import inspect

                from esbhub.db import engine_for, upgrade

                url = request.app.state.settings.effective_database_url
                if not inspect(engine_for(url)).has_table("route_versions"):
                    upgrade(url)
                st = request.app.state.route_store = RouteStore(url)
    return st


def _active(st: RouteStore, name: str) -> dict[str, Any]:
    v = st.get(name)
    if v is None:
        raise ApiError(404, "not_found", f"no route '{name}'")
    if v["action"] == DELETE_ACTION:
        raise ApiError(404, "not_found", f"route '{name}' was deleted by {v['author']} at {v['created_at']}")
    return v


@router.get("")
def list_routes(request: Request, _p: Any = Depends(require("read"))) -> dict[str, Any]:
    """Every route with its active version and pause state."""
    st = _store(request)
    paused = st.paused()
    return {
        "routes": [
            {"name": n, "version": v["version"], "author": v["author"], "created_at": v["created_at"], "paused": n in paused}
            for n, v in sorted(st.active().items())
        ]
    }


@router.get("/{name}")
def get_route(name: str, request: Request, _p: Any = Depends(require("read"))) -> dict[str, Any]:
    """The active version (YAML content) and the whole version history (who, when, diff)."""
    st = _store(request)
    v = st.get(name)
    if v is None:
        raise ApiError(404, "not_found", f"no route '{name}'")
    if v["action"] == DELETE_ACTION:  # gone, but its history stays readable
        return {"name": name, "deleted": True, "deleted_by": v["author"], "deleted_at": v["created_at"],
                "version": None, "content": None, "paused": False, "history": st.versions(name)}
    return {"name": name, "deleted": False, "version": v["version"], "content": v["content"],
            "paused": name in st.paused(), "history": st.versions(name)}


@router.delete("/{name}")
def delete_route(name: str, request: Request, principal: Any = Depends(require("routes"))) -> dict[str, Any]:
    """Delete a route: workers drain its queues (everything accepted before now is processed),
    then stop it and remove its queues. Its version history stays, ending with the deletion
    (who, when); ``POST …/rollback`` brings the last version back."""
    st = _store(request)
    _active(st, name)
    try:
        v = st.delete(name, by=principal.name)
    except KeyError:
        raise ApiError(404, "not_found", f"no route '{name}'") from None
    return {"name": name, "deleted": True, "version": v["version"], "deleted_by": v["author"], "deleted_at": v["created_at"]}


@router.get("/{name}/versions/{version}")
def get_version(name: str, version: int, request: Request, _p: Any = Depends(require("read"))) -> dict[str, Any]:
    v = _store(request).get(name, version)
    if v is None:
        raise ApiError(404, "not_found", f"no version {version} of route '{name}'")
    return v


@router.put("/{name}")
async def put_route(name: str, request: Request, principal: Any = Depends(require("routes"))) -> dict[str, Any]:
    """Validate the YAML body and store it as the next version; 422 with file:line errors if invalid."""
    body = (await request.body()).decode("utf-8", errors="replace")
    from starlette.concurrency import run_in_threadpool

    st = _store(request)
    r = await run_in_threadpool(apply_text, st, body, file=f"PUT /v1/routes/{name}", author=principal.name, expect_name=name)
    if r.errors:
        raise ApiError(422, "invalid_route", f"route '{name}' refused; the running version is unchanged", details=r.errors)
    v = st.get(name)
    return {"name": name, "version": v["version"] if v else None, "changed": bool(r.applied),
            "diff": r.applied[0]["diff"] if r.applied else ""}


def _set_paused(request: Request, name: str, paused: bool, principal: Any) -> dict[str, Any]:
    st = _store(request)
    _active(st, name)
    st.set_paused(name, paused, by=principal.name)
    return {"name": name, "paused": paused}


@router.post("/{name}/pause")
def pause_route(name: str, request: Request, principal: Any = Depends(require("routes"))) -> dict[str, Any]:
    return _set_paused(request, name, True, principal)


@router.post("/{name}/resume")
def resume_route(name: str, request: Request, principal: Any = Depends(require("routes"))) -> dict[str, Any]:
    return _set_paused(request, name, False, principal)


@router.post("/{name}/rollback")
def rollback_route(
    name: str, request: Request, to: int | None = Query(default=None, description="Version to return to (default: the previous one)."),
    principal: Any = Depends(require("routes")),
) -> dict[str, Any]:
    st = _store(request)
    if st.get(name) is None:  # a deleted route can be rolled back (brought back)
        raise ApiError(404, "not_found", f"no route '{name}'")
    try:
        v = st.rollback(name, to, author=principal.name)
    except (KeyError, ValueError) as exc:
        raise ApiError(409, "cannot_rollback", str(exc).strip("'\"")) from None
    return {"name": name, "version": v["version"], "comment": v["comment"]}
