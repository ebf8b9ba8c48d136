"""Conformance harness of the telecom pack's ``mdm_link`` sink (esbhub/telecom/links.py): its peer
is the MDM database — SQLite in a temp dir; a PostgreSQL URL on a closed port is the peer down."""

from __future__ import annotations

import sqlalchemy as sa

from esbhub.bus.envelope import Envelope
from esbhub.db import upgrade

from .conformance import Harness, free_port, harness


@harness("mdm_link")
class MdmLinkHarness(Harness):
    inline_secret = ("sink", {"database_url": "postgresql+psycopg://u:hunter2@127.0.0.1:5432/x"})

    def sink_config(self):
        self.url = f"sqlite:///{self.tmp_path / 'mdm.db'}"
        upgrade(self.url)
        return {"database_url": self.url, "kind": "alarm"}

    def down_sink_config(self):
        return {"database_url": f"postgresql+psycopg://u@127.0.0.1:{free_port()}/x?connect_timeout=1"}

    def envelope(self, i: int = 0) -> Envelope:
        return Envelope.create("alarm.v1", {"alarm_id": f"A{i}", "customers": [{"golden_id": f"G{i}"}]}, source="conformance")

    def delivered(self, env: Envelope) -> bool:
        with sa.create_engine(self.url).connect() as c:
            return c.execute(sa.text("SELECT COUNT(*) FROM mdm_golden_link WHERE ref = :r"),
                             {"r": f"{env.payload['alarm_id']}@{env.payload['customers'][0]['golden_id']}"}).scalar() == 1
