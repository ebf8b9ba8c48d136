"""``mdm_link`` sink: records a message on its customers' 360 view (MDM ``golden_links``).

Each golden id found at ``customers_field`` (a list of ``{golden_id, …}``) gets a link of
``kind`` with ref ``<ref>@<golden_id>`` (``ref`` from the payload field ``ref_field``) and the
payload as its data; linking is idempotent on kind + ref, so a redelivery changes nothing.
Writes go to the hub database of the process settings (``ESBHUB_DATABASE_URL`` / data dir).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from esbhub.adapters.base import AdapterConfig, AdapterSpec, Sink
from esbhub.bus.envelope import Envelope
from esbhub.errors import InvalidMessage


class MdmLinkConfig(AdapterConfig):
    kind: str = Field(default="alarm", min_length=1, max_length=32, description="Link kind shown on the 360 view.")
    ref_field: str = Field(default="alarm_id", description="Payload field whose value is the link's reference.")
    customers_field: str = Field(default="customers", description="Payload field listing {golden_id, …} customers.")


class MdmLinkSink(Sink[MdmLinkConfig]):
    adapter_name = "mdm_link"

    def deliver(self, envelope: Envelope) -> dict[str, Any] | None:
        from esbhub.config import Settings
        from esbhub.mdm.service import service_for

        p = envelope.payload if isinstance(envelope.payload, dict) else {}
        ref = p.get(self.config.ref_field)
        if not ref:
            raise InvalidMessage(f"mdm_link: payload has no '{self.config.ref_field}'")
        svc = service_for(Settings())
        linked = []
        for c in p.get(self.config.customers_field) or []:
            gid = c.get("golden_id") if isinstance(c, dict) else None
            if gid:
                svc.link(self.config.kind, f"{ref}@{gid}", dict(p), golden_id=gid)
                linked.append(gid)
        return {"linked": linked}


SPEC = AdapterSpec(
    name="mdm_link",
    config_model=MdmLinkConfig,
    sink_cls=MdmLinkSink,
    description="Record a message (alarm, payment, order) on its customers' 360 view in the MDM (golden_links).",
)
