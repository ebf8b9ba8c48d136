"""API key administration over HTTP (admin scope): create, list, revoke."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from esbhub.api.errors import ApiError
from esbhub.auth import Principal, audit, require
from esbhub.auth.principal import SCOPES

router = APIRouter(prefix="/v1/keys", tags=["keys"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, description="The system that will use the key, e.g. 'billing'.")
    scopes: list[str] = Field(default_factory=lambda: ["ingest"], description=f"Any of {sorted(SCOPES)}.")
    types: list[str] = Field(default_factory=lambda: ["#"], description="Message types (topic patterns) it may post.")
    org_scope: str | None = Field(default=None, description="Organization the key is limited to (not enforced yet).")


@router.get("", summary="List API keys (never the keys themselves)")
async def list_keys(request: Request, _p: Principal = Depends(require("admin"))) -> dict:
    return {"items": await asyncio.to_thread(request.app.state.keys.list)}


@router.post("", status_code=201, summary="Create an API key; the key is shown in this answer only")
async def create_key(body: KeyCreate, request: Request, p: Principal = Depends(require("admin"))) -> dict:
    try:
        kid, key = await asyncio.to_thread(
            lambda: request.app.state.keys.create(body.name, scopes=body.scopes, types=body.types,
                                                  org_scope=body.org_scope, created_by=p.actor)
        )
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc), [{"loc": "body.scopes", "msg": str(exc), "type": "value_error"}]) from None
    audit(p, "key_created", kid, name=body.name, scopes=body.scopes, types=body.types)
    return {"key_id": kid, "key": key}


@router.delete("/{key_id}", summary="Revoke an API key")
async def revoke_key(key_id: str, request: Request, p: Principal = Depends(require("admin"))) -> dict:
    ok = await asyncio.to_thread(request.app.state.keys.revoke, key_id, by=p.actor)
    if not ok:
        raise ApiError(404, "not_found", f"no active key '{key_id}'")
    audit(p, "key_revoked", key_id)
    return {"key_id": key_id, "revoked": True}
