"""Built-in lookup functions for ``enrich.mdm`` (registered on first use of the registry).

* ``mdm.golden_by_xref`` — key ``"system:source_id"`` (or ``{system, source_id}``) → the golden
  record holding that source record, or null;
* ``mdm.golden`` — key: a golden id → the golden record, or null.

They read the hub database named by the process settings (:func:`esbhub.config.process_settings`:
the worker's, else ``ESBHUB_CONFIG`` / ``ESBHUB_DATABASE_URL`` / data dir).
"""

from __future__ import annotations

import threading
from typing import Any

_svc: Any = None
_lock = threading.Lock()


def _service() -> Any:
    global _svc
    with _lock:
        if _svc is None:
            from esbhub.config import process_settings
            from esbhub.mdm.service import service_for

            _svc = service_for(process_settings())  # the process's one service (its matcher index, its locks)
        return _svc


def golden_by_xref(key: Any, **_: Any) -> Any:
    from esbhub.mdm.service import NotFound

    if isinstance(key, dict):
        system, sid = key.get("system"), key.get("source_id")
    else:
        system, _sep, sid = str(key).partition(":")
    if not system or not sid:
        return None
    svc = _service()
    try:
        x = svc.xref(str(system), str(sid))
        gid = x.get("golden_id")
        return svc.golden(gid) if gid else None
    except NotFound:
        return None


def golden(key: Any, **_: Any) -> Any:
    from esbhub.mdm.service import NotFound

    try:
        return _service().golden(str(key))
    except NotFound:
        return None


BUILTIN = {"mdm.golden_by_xref": golden_by_xref, "mdm.golden": golden}
