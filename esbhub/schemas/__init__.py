"""Canonical payload schemas, one pydantic model per versioned message type.

``SCHEMAS`` maps a type name (``party.v1``) to its model. Routes, ingest and the schema
export all go through :func:`get_schema` / :func:`validate_payload`, so a new type is one
entry here. Types without a registered schema (e.g. internal ``party.golden.updated.v1``
events) are published by the hub itself and are not accepted at the HTTP edge unless
registered.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from esbhub.errors import ErrorDetail, InvalidMessage
from esbhub.schemas.alarm import Alarm
from esbhub.schemas.bill import Bill
from esbhub.schemas.party import Party
from esbhub.schemas.payment import Payment
from esbhub.schemas.service_order import ServiceOrder

SCHEMAS: dict[str, type[BaseModel]] = {
    "party.v1": Party,
    "bill.v1": Bill,
    "payment.v1": Payment,
    "alarm.v1": Alarm,
    "service_order.v1": ServiceOrder,
}


ENTRY_POINT_GROUP = "esbhub.schemas"


def _load_plugin_schemas() -> None:
    """Types other packages declare: ``[project.entry-points."esbhub.schemas"]
    "customer.billing.v1" = "pkg.module:Model"`` (the telecom pack registers billing's native
    customer type this way). Loaded once, at import, so every consumer (ingest, the SOAP
    endpoint's service list, route lint, the docs) sees the same set."""
    import warnings
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            model = ep.load()
        except Exception as exc:  # noqa: BLE001 — one broken plug-in must not take every type down
            warnings.warn(f"schema plug-in '{ep.name}' ({ep.value}) failed to load: {exc!r}", stacklevel=2)
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            warnings.warn(f"schema plug-in '{ep.name}' ({ep.value}) is not a pydantic model", stacklevel=2)
            continue
        SCHEMAS.setdefault(ep.name, model)


def register_schema(type_name: str, model: type[BaseModel]) -> None:
    """Register an extra canonical type (e.g. from a plug-in)."""
    SCHEMAS[type_name] = model


_load_plugin_schemas()


def suggest(name: str, choices: list[str] | set[str] | dict[str, Any]) -> str | None:
    """'did you mean …' for a misspelt name, or None."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None


def get_schema(type_name: str) -> type[BaseModel]:
    try:
        return SCHEMAS[type_name]
    except KeyError:
        raise InvalidMessage(
            f"unknown message type '{type_name}'",
            details=[
                ErrorDetail(
                    loc="type",
                    msg=f"unknown message type '{type_name}'; known: {', '.join(sorted(SCHEMAS))}",
                    type="unknown_type",
                    hint=suggest(type_name, SCHEMAS),
                )
            ],
        ) from None


def details_from_validation_error(exc: ValidationError, prefix: str = "payload") -> list[ErrorDetail]:
    out = []
    for e in exc.errors(include_url=False):
        loc = ".".join([prefix, *(str(p) for p in e["loc"])]) if e["loc"] else prefix
        out.append(ErrorDetail(loc=loc, msg=e["msg"], type=e["type"]))
    return out


def validate_payload(type_name: str, payload: Any) -> dict[str, Any]:
    """Validate ``payload`` against the schema of ``type_name``; return its JSON form.

    Raises :class:`InvalidMessage` naming each wrong field and why.
    """
    model = get_schema(type_name)
    try:
        obj = model.model_validate(payload)
    except ValidationError as exc:
        raise InvalidMessage(
            f"payload does not match schema '{type_name}'", details=details_from_validation_error(exc)
        ) from None
    return obj.model_dump(mode="json", exclude_none=True)


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every registered type, keyed by type name."""
    return {name: model.model_json_schema() for name, model in sorted(SCHEMAS.items())}


__all__ = [
    "SCHEMAS",
    "Alarm",
    "Bill",
    "Party",
    "Payment",
    "ServiceOrder",
    "get_schema",
    "json_schemas",
    "register_schema",
    "suggest",
    "validate_payload",
]
