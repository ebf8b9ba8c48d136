"""API-key authentication and the seams for roles, organization scopes and audit.

* :func:`require` — a FastAPI dependency: ``principal = Depends(require("admin"))``. Keys
  come in ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; missing / unknown /
  revoked → 401, known but without the scope → 403.
* :class:`Principal` — who is calling (scopes, allowed message types, ``org_scope``).
* :func:`audit` — called on every admin action; logs ``admin_action_performed`` now and
  runs the hooks in :data:`AUDIT_HOOKS` (the audit trail of a later issue plugs in there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request

from esbhub.api.errors import ApiError
from esbhub.auth.principal import SCOPES, Principal
from esbhub.logging import get_logger

log = get_logger("esbhub.audit")

AuditHook = Callable[[str, str, str, dict[str, Any]], None]
AUDIT_HOOKS: list[AuditHook] = []
"""Extra audit sinks: ``hook(actor, action, target, details)``."""

_WWW = {"WWW-Authenticate": 'Bearer realm="esbhub"'}


def audit(actor: str | Principal, action: str, target: str = "", **details: Any) -> None:
    """Record one admin action (who, what, on what). Never pass payloads or secrets."""
    who = actor.actor if isinstance(actor, Principal) else actor
    log.info("admin_action_performed", actor=who, action=action, target=target, **details)
    for hook in AUDIT_HOOKS:
        try:
            hook(who, action, target, details)
        except Exception as exc:  # noqa: BLE001 — an audit sink must not break the action; it is logged
            log.error("audit_hook_failed", hook=getattr(hook, "__name__", repr(hook)), error=str(exc))


def presented_key(request: Request) -> str | None:
    h = request.headers
    auth = h.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = h.get("x-api-key")
    return key.strip() if key else None


def authenticate(request: Request) -> Principal:
    """The caller of ``request`` or a 401."""
    key = presented_key(request)
    if not key:
        raise ApiError(
            401,
            "unauthorized",
            "an API key is required: 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers=_WWW,
        )
    principal = request.app.state.keys.verify(key)
    if principal is None:
        raise ApiError(401, "unauthorized", "the API key is unknown or revoked", headers=_WWW)
    return principal


def require(scope: str) -> Callable[[Request], Any]:
    """A FastAPI dependency that authenticates the caller and checks ``scope``."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope '{scope}'; known: {', '.join(sorted(SCOPES))}")

    async def dependency(request: Request) -> Principal:
        # async on purpose: a sync dependency costs a thread hop per request; verify() is
        # served from memory except on a cache miss (one indexed primary-key read)
        principal = authenticate(request)
        if not principal.has_scope(scope):
            raise ApiError(403, "forbidden", f"this API key lacks the '{scope}' scope")
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


__all__ = ["AUDIT_HOOKS", "SCOPES", "Principal", "audit", "authenticate", "require"]
