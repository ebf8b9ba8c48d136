"""Durable adapter state (SQL source watermarks, file poller positions …) in the hub database.

One row per state key; the value is a small JSON document. Written only after the data it
describes is durably on the bus, so a crash repeats work (deduplicated by stable ids) and
never skips it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from esbhub.db import Base, engine_for


class AdapterState(Base):
    __tablename__ = "adapter_state"

    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    value: Mapped[Any] = mapped_column(sa.JSON, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)


class StateStore:
    """get / put of JSON state by key; table created by the ``adapters`` Alembic branch."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        AdapterState.__table__.create(self.engine, checkfirst=True)  # type: ignore[attr-defined]

    def get(self, key: str) -> Any:
        t = AdapterState.__table__
        with self.engine.connect() as c:
            row = c.execute(sa.select(t.c.value).where(t.c.key == key)).first()
        return None if row is None else row[0]

    def put(self, key: str, value: Any) -> None:
        t = AdapterState.__table__
        now = datetime.now(UTC)
        with self.engine.begin() as c:
            n = c.execute(sa.update(t).where(t.c.key == key).values(value=value, updated_at=now)).rowcount
            if n == 0:
                c.execute(sa.insert(t).values(key=key, value=value, updated_at=now))

    def delete(self, key: str) -> None:
        t = AdapterState.__table__
        with self.engine.begin() as c:
            c.execute(sa.delete(t).where(t.c.key == key))
