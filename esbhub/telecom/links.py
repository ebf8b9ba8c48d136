"""``mdm_link`` sink: records a message on its customers' 360 view (MDM ``golden_links``).

Two ways to say whose item a message is (exactly one per sink):

* **by source key** (``source_system`` or ``source_system_field``, plus ``source_id_field``):
  the link is stored under the source system's own customer key (``billing:C1``) with ref
  ``<ref>@<system>:<id>``. The 360 view resolves that key through the xref when it is read, so
  the link shows as soon as the source record is mastered (it may arrive after the bill) and
  follows the record through merges and unmerges. Use it wherever the message names the
  customer in a source system's terms — which is nearly everywhere.
* **by golden id** (``customers_field``, the default when no source key is configured): every
  ``{golden_id, …}`` in that list gets a link with ref ``<ref>@<golden_id>``. Such a link stays
  on that golden id (and whatever it is merged into): after an unmerge it does not follow the
  source record it belonged to.

``ref_field`` names the item (a bill id, a payment id); a list there (a customer's circuits)
makes one link per element. Field names are dotted paths into the payload
(``attributes.billing_account``, ``customers.0.resource_customer``). A value that is absent,
null, blank or an empty list is *missing*: ``when_missing: fail`` (default) refuses the message
naming the field (InvalidMessage → dead-letter), ``skip`` links nothing and logs why — for routes
where the item is optional (a customer change without an account). The link's data is the
payload, or the ``data_fields`` of it. Linking is idempotent on kind + ref, so a redelivery
changes nothing but the data and time. Writes go to ``database_url`` (the MDM's database;
default: the hub database of the process settings, :func:`esbhub.config.process_settings` — the
worker's own, with its ``mdm`` section). An
unreachable database is a transient error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from esbhub.adapters.base import AdapterConfig, AdapterSpec, Sink, check_url_secret, resolve_url
from esbhub.bus.envelope import Envelope
from esbhub.errors import InvalidMessage, TransientError
from esbhub.logging import get_logger

log = get_logger("esbhub.telecom.links")

REF_MAX = 200  # mdm_golden_link.ref
KEY_PART_MAX = 64  # mdm_golden_link.source_system / source_id
DEFAULT_CUSTOMERS_FIELD = "customers"

FieldPath = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^.\s]+(\.[^.\s]+)*$")]


class MdmLinkConfig(AdapterConfig):
    """Which item a message is (``ref_field``) and whose: configure exactly one of two modes.

    **By source key** — ``source_system`` (or ``source_system_field``) and ``source_id_field``: the
    link is stored under the sending system's own customer key and resolved through the xref
    whenever the 360 view is read, so it shows once that source record is mastered (it may arrive
    after the bill) and follows the record through merges and unmerges. The 360 view gives
    ``via: billing:C1``.

    ```yaml
    to:
      - topic: bill.v1
        name: bills
      - adapter: mdm_link          # the same message also goes to the customer's 360 view
        name: customer-360
        config:
          kind: bill                          # → linked.bill on GET /v1/customers/{golden_id}
          ref_field: bill_id                  # ref B1@billing:C1, item B1
          source_system: billing              # or source_system_field: customer_source
          source_id_field: customer_source_id # billing's customer id on the bill
    ```

    **By golden id** — ``customers_field`` (the default mode, field ``customers``, when no source
    key is configured): every ``{golden_id, …}`` listed gets a link ``<ref>@<golden_id>`` that stays
    on that golden id (and what it is merged into); after an unmerge it does not follow the source
    record. The 360 view gives ``via: G0000000042``.

    ```yaml
      - adapter: mdm_link
        config: {kind: alarm, ref_field: alarm_id, customers_field: customers}
    ```

    Field names are dotted paths into the payload (``attributes.billing_account``,
    ``customers.0.resource_customer``); a list at ``ref_field`` makes one link per element (a
    customer's circuits). A value that is absent, null, blank or an empty list is missing:
    ``when_missing: fail`` refuses the message naming the field, ``skip`` links nothing and logs
    ``mdm_link_skipped``. Relinking an item under the same key updates its data; linking it under
    another key adds a link and leaves the old one.
    """

    kind: str = Field(default="alarm", min_length=1, max_length=32,
                      description="Link kind shown on the 360 view (account, service, bill, payment, alarm …).")
    ref_field: FieldPath = Field(
        default="alarm_id", description="Payload field (dotted path) whose value is the item's reference; a list "
        "makes one link per element.")
    source_system: str | None = Field(
        default=None, min_length=1, max_length=KEY_PART_MAX, pattern=r"^[^:\s]+$",
        description="Link by source key: the source system whose customer id the message carries (e.g. 'billing').")
    source_system_field: FieldPath | None = Field(
        default=None, description="Link by source key: payload field holding the source system (instead of "
        "a fixed source_system).")
    source_id_field: FieldPath | None = Field(
        default=None, description="Link by source key: payload field holding the source system's customer id.")
    customers_field: FieldPath | None = Field(
        default=None, description="Link by golden id: payload field listing {golden_id, …} customers; the mode and "
        f"field '{DEFAULT_CUSTOMERS_FIELD}' used when no source key is configured.")
    data_fields: list[FieldPath] | None = Field(
        default=None, description="Payload fields (dotted paths) kept as the link's data, each under its last "
        "name; default: the whole payload.")
    when_missing: Literal["fail", "skip"] = Field(
        default="fail", description="A message without the ref or the customer (absent, null, blank, empty list): "
        "'fail' refuses it naming the field (dead-letter); 'skip' links nothing and logs why.")
    database_url: Annotated[str, AfterValidator(check_url_secret)] | None = Field(
        default=None, description="SQLAlchemy URL of the MDM database (password only as ${env:..}/${file:..}); "
        "default: the hub database of the process settings.")

    @model_validator(mode="after")
    def _one_mode(self) -> MdmLinkConfig:
        """Exactly one way to find the customer, fully given: a half-configured source key would
        otherwise fall back to linking by golden id and silently link nothing."""
        by_source = [n for n in ("source_system", "source_system_field", "source_id_field") if getattr(self, n)]
        if by_source and self.customers_field is not None:
            raise ValueError(
                f"customers_field (link by golden id) and {', '.join(by_source)} (link by source key) exclude each "
                "other: configure one mode")
        if by_source:
            if self.source_system and self.source_system_field:
                raise ValueError("give source_system (fixed) or source_system_field (from the payload), not both")
            if not (self.source_system or self.source_system_field):
                raise ValueError("linking by source key needs source_system (fixed) or source_system_field "
                                 "(from the payload)")
            if not self.source_id_field:
                raise ValueError("linking by source key needs source_id_field (the payload field holding the "
                                 "source system's customer id)")
        return self

    @property
    def by_source_key(self) -> bool:
        return self.source_id_field is not None


_ABSENT = object()


def pluck(payload: Any, path: str) -> Any:
    """The value at a dotted ``path`` (a numeric part indexes a list); ``None`` when absent."""
    v: Any = payload
    for part in path.split("."):
        if isinstance(v, dict):
            v = v.get(part, _ABSENT)
        elif isinstance(v, list) and part.isdigit():
            v = v[int(part)] if int(part) < len(v) else _ABSENT
        else:
            v = _ABSENT
        if v is _ABSENT:
            return None
    return v


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v)


def _text(v: Any, field: str, limit: int) -> str:
    """A scalar payload value as link text (stripped, as source keys are), refused when it cannot be one."""
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise InvalidMessage(f"mdm_link: '{field}' must be text or a whole number, not {type(v).__name__}")
    t = str(v).strip()
    if not t or len(t) > limit:
        raise InvalidMessage(f"mdm_link: '{field}' must be 1..{limit} characters, got {len(t)}")
    return t


class _Skip(Exception):
    """The message names no item or no customer and the sink is configured to skip it."""


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
                from esbhub.config import process_settings

                self._svc = service_for(process_settings())
        return self._svc

    def _required(self, payload: Any, field: str) -> Any:
        v = pluck(payload, field)
        if _missing(v):
            if self.config.when_missing == "skip":
                raise _Skip(f"no '{field}'")
            raise InvalidMessage(f"mdm_link: payload has no '{field}' (when_missing: fail)")
        return v

    def _refs(self, payload: Any) -> list[str]:
        field = self.config.ref_field
        v = self._required(payload, field)
        items = v if isinstance(v, list) else [v]
        return [_text(x, f"{field}[{i}]" if isinstance(v, list) else field, REF_MAX) for i, x in enumerate(items)]

    def _targets(self, payload: Any) -> list[tuple[str, dict[str, Any]]]:
        """(ref suffix, ``link`` keyword) per customer the message is linked to."""
        c = self.config
        if c.by_source_key:
            assert c.source_id_field is not None
            system = c.source_system or _text(self._required(payload, str(c.source_system_field)),
                                              str(c.source_system_field), KEY_PART_MAX)
            if ":" in system:
                raise InvalidMessage(f"mdm_link: '{c.source_system_field}' must not contain ':' (got '{system}')")
            sid = _text(self._required(payload, c.source_id_field), c.source_id_field, KEY_PART_MAX)
            return [(f"{system}:{sid}", {"source": (system, sid)})]
        field = c.customers_field or DEFAULT_CUSTOMERS_FIELD
        customers = self._required(payload, field)
        if not isinstance(customers, list):
            raise InvalidMessage(f"mdm_link: '{field}' must be a list of {{golden_id, …}}, not {type(customers).__name__}")
        out = []
        for i, cust in enumerate(customers):
            gid = self._required(cust, "golden_id") if isinstance(cust, dict) else None
            if gid is None:
                raise InvalidMessage(f"mdm_link: '{field}[{i}]' must be an object with a golden_id")
            gid = _text(gid, f"{field}[{i}].golden_id", 32)
            out.append((gid, {"golden_id": gid}))
        return out

    def _data(self, payload: Any) -> dict[str, Any]:
        if self.config.data_fields is None:
            return dict(payload) if isinstance(payload, dict) else {}
        return {f.rsplit(".", 1)[-1]: pluck(payload, f) for f in self.config.data_fields}

    def deliver(self, envelope: Envelope) -> dict[str, Any] | None:
        import sqlalchemy as sa

        p = envelope.payload if isinstance(envelope.payload, dict) else {}
        try:
            refs = self._refs(p)
            targets = self._targets(p)
        except _Skip as why:
            log.info("mdm_link_skipped", envelope_id=envelope.id, type=envelope.type, kind=self.config.kind,
                     reason=str(why))
            return {"linked": [], "skipped": str(why)}
        links = []
        for ref in refs:
            for suffix, whose in targets:
                full = f"{ref}@{suffix}"
                if len(full) > REF_MAX:
                    raise InvalidMessage(f"mdm_link: link ref '{full[:60]}…' is longer than {REF_MAX} characters")
                links.append((full, whose))
        data = self._data(p)
        try:
            self._service().link_many(self.config.kind, links, data)  # one transaction for the message
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise TransientError(f"mdm_link: MDM database unavailable: {type(exc.orig).__name__}") from exc
        return {"linked": [full for full, _ in links]}


SPEC = AdapterSpec(
    name="mdm_link",
    config_model=MdmLinkConfig,
    sink_cls=MdmLinkSink,
    description="Record a message (account, service, bill, payment, alarm) on its customer's 360 view in the MDM "
    "(golden_links), by the source system's customer key or by golden id.",
)
