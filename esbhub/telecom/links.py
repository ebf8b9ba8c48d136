"""``mdm_link`` sink: records a message on its customers' 360 view (MDM ``golden_links``).

Each golden id found at ``customers_field`` (a list of ``{golden_id, …}``) gets a link of
``kind`` with ref ``<ref>@<golden_id>`` (``ref`` from the payload field ``ref_field``) and the
payload as its data; linking is idempotent on kind + ref, so a redelivery changes nothing.
Writes go to ``database_url`` (the MDM's database; default: the hub database of the process
settings, ``ESBHUB_DATABASE_URL`` / data dir). An unreachable database is a transient error.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

from esbhub.adapters.base import AdapterConfig, AdapterSpec, Sink, check_url_secret, resolve_url
from esbhub.bus.envelope import Envelope
from esbhub.errors import InvalidMessage, TransientError


class MdmLinkConfig(AdapterConfig):
    kind: str = Field(default="alarm", min_length=1, max_length=32, description="Link kind shown on the 360 view.")
    ref_field: str = Field(default="alarm_id", description="Payload field whose value is the link's reference.")
    customers_field: str = Field(default="customers", description="Payload field listing {golden_id, …} customers.")
    database_url: Annotated[str, AfterValidator(check_url_secret)] | None = Field(
        default=None, description="SQLAlchemy URL of the MDM database (password only as ${env:..}/${file:..}); "
        "default: the hub database of the settings.")


class MdmLinkSink(Sink[MdmLinkConfig]):
    adapter_name = "mdm_link"

    def __init__(self, config: MdmLinkConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._svc: Any = None

    def _service(self) -> Any:
        if self._svc is None:
            from esbhub.mdm.service import MdmService, service_for

            if self.config.database_url:
                self._svc = MdmService(resolve_url(self.config.database_url), migrate=False)
            else:
                from esbhub.config import Settings

                self._svc = service_for(Settings())
        return self._svc

    def deliver(self, envelope: Envelope) -> dict[str, Any] | None:
        import sqlalchemy as sa

        p = envelope.payload if isinstance(envelope.payload, dict) else {}
        ref = p.get(self.config.ref_field)
        if not ref:
            raise InvalidMessage(f"mdm_link: payload has no '{self.config.ref_field}'")
        linked = []
        try:
            svc = self._service()
            for c in p.get(self.config.customers_field) or []:
                gid = c.get("golden_id") if isinstance(c, dict) else None
                if gid:
                    svc.link(self.config.kind, f"{ref}@{gid}", dict(p), golden_id=gid)
                    linked.append(gid)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise TransientError(f"mdm_link: MDM database unavailable: {type(exc.orig).__name__}") from exc
        return {"linked": linked}


SPEC = AdapterSpec(
    name="mdm_link",
    config_model=MdmLinkConfig,
    sink_cls=MdmLinkSink,
    description="Record a message (alarm, payment, order) on its customers' 360 view in the MDM (golden_links).",
)
