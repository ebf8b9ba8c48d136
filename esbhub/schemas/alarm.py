"""``alarm.v1`` — a network-management alarm (from an SNMP trap, a poll or an NMS)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from esbhub.schemas.common import ShortCode, Strict


class Varbind(Strict):
    oid: str = Field(pattern=r"^[0-9]+(\.[0-9]+)*$", description="Numeric OID.")
    name: str | None = Field(default=None, max_length=200, description="Symbolic name when a MIB resolved it.")
    value: str | int | float | None = Field(default=None, description="Decoded value.")


class Alarm(Strict):
    alarm_id: ShortCode = Field(description="Unique alarm id (or the trap's id).")
    source_address: str = Field(max_length=100, description="Network element address that raised it.")
    kind: Literal["circuit_down", "circuit_up", "port_down", "port_up", "threshold", "other"] = Field(
        default="other", description="What happened, as mapped from the trap OID or the NMS event."
    )
    severity: Literal["critical", "major", "minor", "warning", "cleared", "info"] = Field(
        default="major", description="Severity, mapped by the adapter's config; 'cleared' ends an earlier alarm."
    )
    trap_oid: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+)*$", description="snmpTrapOID of the trap, if it came from one.")
    circuit_ids: list[ShortCode] = Field(default_factory=list, description="Circuits affected.")
    port: str | None = Field(default=None, max_length=100, description="Port / interface affected, e.g. 'GE0/0/1'.")
    raised_at: datetime = Field(description="When the network element raised the alarm (UTC if no zone is given).")
    text: str | None = Field(default=None, max_length=2000, description="Human-readable alarm text.")
    varbinds: list[Varbind] = Field(default_factory=list, max_length=500, description="Decoded trap variable bindings.")
    customers: list[dict[str, str | int | float | None]] = Field(
        default_factory=list, description="Affected customers, filled in by enrichment (golden id, name, tier, manager)."
    )
