"""Helpers for the MDM store/service tests: party builders and valid codes.

The tests run the real engine (``esbhub.mdm.standardize``, ``esbhub.mdm.match.Matcher``,
``esbhub.mdm.cluster.can_link``) with its default model (no term frequencies).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from esbhub.mdm.standardize.codes import make_uscc
from esbhub.schemas.party import Party


def uscc(n: int, division: str = "440300") -> str:
    """A valid USCC, distinct per ``n``."""
    return make_uscc("9", "1", division, f"MA{n:06d}")


def party(system: str, sid: str, name: str, **kw: Any) -> Party:
    phones = kw.pop("phones", [])
    attrs = kw.pop("attributes", {})
    addr = kw.pop("address", None)
    return Party(
        source_system=system,
        source_id=sid,
        name=name,
        phones=[{"number": p} for p in phones],
        attributes=attrs,
        addresses=[{"text": addr}] if addr else [],
        source_updated_at=kw.pop("updated", datetime(2026, 1, 1, tzinfo=UTC)),
        **kw,
    )


def make_service(url: str, **kw: Any):
    from esbhub.mdm.service import MdmService

    return MdmService(url, **kw)


def fresh_pg_db(pg_url: str, name: str):
    """Create database ``name`` on the server of ``pg_url``; returns (url, drop)."""
    import sqlalchemy as sa

    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = pg_url.rsplit("/", 1)[0] + "/" + name

    def drop() -> None:
        from esbhub.db import _engines

        eng = _engines.pop(url, None)
        if eng is not None:
            eng.dispose()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def db_fixture_url(request, tmp_path, unique: str):
    """sqlite or postgresql URL for the param of the requesting test; yields cleanup via finalizer."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mdm.db'}"
    url, drop = fresh_pg_db(request.getfixturevalue("pg_url"), "mdm_" + unique)
    request.addfinalizer(drop)
    return url


def review_pair() -> tuple[Party, Party]:
    """Two records the engine's default model sends to a steward (same 字号 and city, little else)."""
    from esbhub.mdm.match import Matcher
    from esbhub.mdm.standardize import standardize

    a = party("crm", "1", "深圳市华信科技有限公司", phones=["0755-88886666"], city="深圳",
              address="广东省深圳市南山区科技园路1号")
    b = party("res", "R1", "华信科技有限公司", city="深圳")
    r = Matcher().score(standardize(a), standardize(b))
    assert r.decision == "review", f"engine defaults changed: this pair is now {r.decision} ({r.weight})"
    return a, b
