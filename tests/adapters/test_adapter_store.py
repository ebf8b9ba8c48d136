"""The adapters' Alembic branch creates the state table the SQL source keeps its watermark in."""

from __future__ import annotations

import sqlalchemy as sa

from esbhub.adapters.store import StateStore
from esbhub.db import engine_for, upgrade


def test_upgrade_creates_adapter_state_and_store_round_trips(tmp_path):
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    upgrade(url)
    assert "adapter_state" in sa.inspect(engine_for(url)).get_table_names()
    st = StateStore(url)
    assert st.get("k") is None
    st.put("k", {"wm": 1})
    st.put("k", {"wm": 2})
    assert st.get("k") == {"wm": 2}
    st.delete("k")
    assert st.get("k") is None


def test_upgrade_creates_adapter_state_on_postgres(pg_url):
    upgrade(pg_url)
    assert "adapter_state" in sa.inspect(engine_for(pg_url)).get_table_names()
