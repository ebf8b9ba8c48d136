"""The adapters' HTTP surface, mounted by ``esbhub.api.app.create_app``:

* the inbound SOAP endpoint (``GET /soap/{service}?wsdl``, ``POST /soap/{service}``) from
  :mod:`esbhub.adapters.soap_server`, for upstream systems that only speak SOAP;
* ``GET /v1/adapters`` and ``GET /v1/adapters/{name}`` — what adapters this hub has, their
  roles and the JSON Schema of their configs (what an engineer writes in a route's
  ``from`` / ``to``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from esbhub.adapters.registry import available_adapters
from esbhub.adapters.soap_server import router as soap_router
from esbhub.auth import require

router = APIRouter()
router.include_router(soap_router)


def _describe(name: str, *, schemas: bool) -> dict[str, Any]:
    spec = available_adapters()[name]
    out: dict[str, Any] = {
        "name": name,
        "description": spec.description,
        "source": spec.source_cls is not None,
        "sink": spec.sink_cls is not None,
    }
    if schemas:
        if spec.source_cls is not None:
            out["source_config_schema"] = spec.config_for("source").model_json_schema()
        if spec.sink_cls is not None:
            out["sink_config_schema"] = spec.config_for("sink").model_json_schema()
    return out


@router.get("/v1/adapters", tags=["adapters"], dependencies=[Depends(require("read"))])
def list_adapters() -> dict[str, Any]:
    """Every adapter this hub can use in a route, with its roles."""
    return {"adapters": [_describe(n, schemas=False) for n in sorted(available_adapters())]}


@router.get("/v1/adapters/{name}", tags=["adapters"], dependencies=[Depends(require("read"))])
def get_adapter(name: str) -> dict[str, Any]:
    """One adapter with the JSON Schema of its source and sink configs."""
    if name not in available_adapters():
        raise HTTPException(status_code=404, detail=f"unknown adapter '{name}'")
    return _describe(name, schemas=True)
