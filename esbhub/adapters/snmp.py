"""SNMP (pysnmp 7, asyncio): a trap / inform receiver that makes ``alarm.v1`` envelopes, and a
GET / WALK poller with one active poller per target across all workers.

Receiver (``mode: trap``)
  * v1/v2c communities and v3 users (authNoPriv / authPriv: SHA-1…SHA-512, AES-128/192/256)
    on a UDP port; each notification becomes an ``alarm.v1`` payload: source address, trap
    OID, decoded varbinds, severity from the first matching ``severity_rules`` entry (trap
    OID prefix, optionally a varbind value), circuit ids from the ``circuit_id_oids`` varbinds.
  * **Informs are acknowledged only after emit returned** (pysnmp's stock receiver answers
    before its callback runs; :class:`_AckAfterEmitReceiver` answers after). If emit fails
    the inform is not answered, so the sender retransmits it; the retransmission carries the
    same envelope id (derived from sender, request id and varbinds), so the bus dedups it.
    Traps (unconfirmed) that fail to emit are retried from memory (bounded by ``max_pending``;
    beyond that they are dropped, counted and logged).
  * Notifications are batched (``emit_batch`` / ``batch_wait``) on an emitter thread; the UDP
    loop never blocks on the bus.
  * Malformed packets (garbage, bad BER, unknown versions) are counted in ``health().detail``
    and ignored; authentication failures (wrong community / user / key) likewise.

Poller (``mode: poll``)
  * GETs ``get_oids`` and WALKs ``walk_oids`` on ``target_host`` every ``poll_interval`` and
    emits one envelope per poll ``{target, polled_at, values: [{oid, value}]}``.
  * One poller per target across all workers: a lease row (key ``snmp-poll:<host>:<port>``)
    in the adapter state table, taken and renewed with a row lock; a worker whose lease is
    held by another live worker skips the poll. A stopped worker releases its lease; a dead
    one's lease expires after ``lease_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from esbhub.adapters.base import (
    AdapterConfig,
    AdapterSpec,
    Emit,
    EnvelopeTemplate,
    PollingSource,
    Source,
    check_url_secret,
    resolve_url,
    stable_id,
)
from esbhub.bus.envelope import Envelope
from esbhub.errors import ConfigError, PermanentError, TransientError
from esbhub.secrets import SecretRef, resolve

SNMP_TRAP_OID = "1.3.6.1.6.3.1.1.4.1.0"
SYS_UPTIME = "1.3.6.1.2.1.1.3.0"

_AUTH = {
    "none": "USM_AUTH_NONE", "MD5": "USM_AUTH_HMAC96_MD5", "SHA": "USM_AUTH_HMAC96_SHA",
    "SHA224": "USM_AUTH_HMAC128_SHA224", "SHA256": "USM_AUTH_HMAC192_SHA256",
    "SHA384": "USM_AUTH_HMAC256_SHA384", "SHA512": "USM_AUTH_HMAC384_SHA512",
}
_PRIV = {
    "none": "USM_PRIV_NONE", "DES": "USM_PRIV_CBC56_DES", "3DES": "USM_PRIV_CBC168_3DES",
    "AES": "USM_PRIV_CFB128_AES", "AES192": "USM_PRIV_CFB192_AES", "AES256": "USM_PRIV_CFB256_AES",
}


# ---------------------------------------------------------------------------------------------
# config


class V3User(BaseModel):
    """An SNMPv3 USM user (keys by reference)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = Field(min_length=1, description="USM user name.")
    auth_protocol: Literal["none", "MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"] = Field(
        default="SHA", description="Authentication protocol."
    )
    auth_key: SecretRef | None = Field(default=None, description="Authentication pass phrase, by reference.")
    priv_protocol: Literal["none", "DES", "3DES", "AES", "AES192", "AES256"] = Field(
        default="AES", description="Privacy (encryption) protocol."
    )
    priv_key: SecretRef | None = Field(default=None, description="Privacy pass phrase, by reference.")
    engine_ids: list[str] = Field(
        default_factory=list,
        description="trap: hex engine ids of the agents sending v3 TRAPs as this user (informs need none).",
    )

    @model_validator(mode="after")
    def _keys(self) -> V3User:
        if self.auth_protocol != "none" and not self.auth_key:
            raise ValueError(f"v3 user '{self.user}': auth_protocol {self.auth_protocol} needs 'auth_key'")
        if self.priv_protocol != "none" and not self.priv_key:
            raise ValueError(f"v3 user '{self.user}': priv_protocol {self.priv_protocol} needs 'priv_key'")
        if self.priv_protocol != "none" and self.auth_protocol == "none":
            raise ValueError(f"v3 user '{self.user}': privacy needs authentication")
        for e in self.engine_ids:
            try:
                bytes.fromhex(e.removeprefix("0x"))
            except ValueError:
                raise ValueError(f"engine id {e!r} is not hex") from None
        return self


class SeverityRule(BaseModel):
    """First matching rule sets severity (and kind) of the alarm."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trap_oid: str = Field(pattern=r"^[0-9]+(\.[0-9]+)*$", description="Trap OID, or a prefix of it.")
    varbind_oid: str | None = Field(
        default=None, pattern=r"^[0-9]+(\.[0-9]+)*$", description="Optional: a varbind (OID prefix) that must be present…"
    )
    equals: str | None = Field(default=None, description="…with this value (compared as text).")
    severity: Literal["critical", "major", "minor", "warning", "cleared", "info"] = Field(description="Severity set.")
    kind: Literal["circuit_down", "circuit_up", "port_down", "port_up", "threshold", "other"] | None = Field(
        default=None, description="Alarm kind set (default 'other')."
    )


class SnmpSourceConfig(AdapterConfig):
    """``mode: trap`` receives traps/informs; ``mode: poll`` GETs/WALKs one agent on a schedule."""

    mode: Literal["trap", "poll"] = Field(default="trap", description="Receiver of notifications, or poller.")
    envelope: EnvelopeTemplate = Field(
        default=EnvelopeTemplate(type="alarm.v1", source="nms"), description="Type and source system of the envelopes."
    )
    v3_users: list[V3User] = Field(default_factory=list, description="SNMPv3 users (trap: accepted; poll: first one used).")
    # -- trap --
    listen_host: str = Field(default="0.0.0.0", description="trap: address to listen on.")  # noqa: S104
    port: int = Field(default=162, ge=0, le=65535, description="trap: UDP port to listen on (0: any free port).")
    communities: list[SecretRef] = Field(
        default_factory=list, description="trap: accepted v1/v2c community strings, by reference."
    )
    engine_id: str | None = Field(default=None, description="trap: hex SNMP engine id of this receiver (informs v3).")
    severity_rules: list[SeverityRule] = Field(default_factory=list, description="trap: severity by trap OID / varbind.")
    default_severity: Literal["critical", "major", "minor", "warning", "cleared", "info"] = Field(
        default="major", description="trap: severity when no rule matches."
    )
    circuit_id_oids: list[str] = Field(
        default_factory=list, description="trap: varbind OIDs (prefixes) whose values are circuit ids."
    )
    text_oid: str | None = Field(default=None, description="trap: varbind OID (prefix) whose value is the alarm text.")
    emit_batch: int = Field(default=500, ge=1, le=100_000, description="trap: most notifications per emit.")
    batch_wait: float = Field(default=0.02, ge=0, le=5, description="trap: seconds to wait for a batch to fill.")
    max_pending: int = Field(default=100_000, ge=1, description="trap: notifications held while the bus is down.")
    fast_path: bool = Field(
        default=True,
        description="trap: read SNMPv2c TRAPs of a known community with a built-in BER reader (several times "
        "faster than the pysnmp engine); everything else (v1, v3, informs, unknown communities) goes through pysnmp.",
    )
    reuse_port: bool = Field(
        default=False,
        description="trap: SO_REUSEPORT, so every worker process can listen on the port (the kernel spreads "
        "senders across them); off: a second listener on the port fails to start.",
    )
    receive_buffer: int = Field(default=4 * 1024 * 1024, ge=65536, description="trap: UDP socket receive buffer, bytes.")
    # -- poll --
    target_host: str | None = Field(default=None, description="poll: agent address.")
    target_port: int = Field(default=161, ge=1, le=65535, description="poll: agent UDP port.")
    version: Literal["v2c", "v3"] = Field(default="v2c", description="poll: protocol version.")
    community: SecretRef | None = Field(default=None, description="poll: v2c community, by reference.")
    get_oids: list[str] = Field(default_factory=list, description="poll: OIDs fetched with GET.")
    walk_oids: list[str] = Field(default_factory=list, description="poll: subtrees fetched with GETNEXT walks.")
    max_rows: int = Field(default=10_000, ge=1, description="poll: most rows per walk.")
    retries: int = Field(default=1, ge=0, le=10, description="poll: retransmissions per request.")
    poll_interval: float = Field(default=60.0, gt=0, le=86400, description="poll: seconds between polls.")
    lease_seconds: float | None = Field(
        default=None, gt=0, description="poll: how long a target lease lasts (default 3 × poll_interval)."
    )
    state_url: str | None = Field(default=None, description="poll: database holding the leases (default: hub database).")

    @model_validator(mode="after")
    def _mode(self) -> SnmpSourceConfig:
        if self.mode == "trap" and not self.communities and not self.v3_users:
            raise ValueError("trap mode needs 'communities' and/or 'v3_users'")
        if self.mode == "poll":
            if not self.target_host:
                raise ValueError("poll mode needs 'target_host'")
            if not self.get_oids and not self.walk_oids:
                raise ValueError("poll mode needs 'get_oids' and/or 'walk_oids'")
            if self.version == "v2c" and not self.community:
                raise ValueError("poll mode with v2c needs 'community' (by reference)")
            if self.version == "v3" and not self.v3_users:
                raise ValueError("poll mode with v3 needs 'v3_users'")
        return self


# ---------------------------------------------------------------------------------------------
# decoding


def decode_value(v: Any) -> str | int | float | None:
    """A JSON-friendly value of a pysnmp/pyasn1 object (ints, dotted OIDs, text or 0x-hex)."""
    name = type(v).__name__
    if name in ("Null", "NoSuchObject", "NoSuchInstance", "EndOfMibView", "UnSpecified"):
        return None
    if name in ("Integer", "Integer32", "Counter32", "Counter64", "Gauge32", "Unsigned32", "TimeTicks"):
        return int(v)
    if name in ("ObjectIdentifier", "ObjectName"):
        return ".".join(str(x) for x in v.asTuple())
    if name == "IpAddress":
        return ".".join(str(b) for b in bytes(v.asOctets()))
    if hasattr(v, "asOctets"):
        return _text_or_hex(bytes(v.asOctets()))
    try:
        return v.prettyPrint()
    except Exception:  # noqa: BLE001 - a value we cannot print is still not worth crashing over
        return str(v)


def _text_or_hex(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
        if all(c.isprintable() or c in "\r\n\t" for c in text):
            return text
    except UnicodeDecodeError:
        pass
    return "0x" + raw.hex()


# -- a small BER reader for the hot path: SNMPv2c TRAP messages only ---------------------------


def _tlv(buf: bytes, i: int, limit: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the TLV at ``i``; ValueError when it does not fit."""
    if i + 2 > limit:
        raise ValueError("truncated")
    tag, ln = buf[i], buf[i + 1]
    i += 2
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte tag")
    if ln & 0x80:
        n = ln & 0x7F
        if n == 0 or n > 4 or i + n > limit:
            raise ValueError("bad length")
        ln = int.from_bytes(buf[i:i + n], "big")
        i += n
    if i + ln > limit:
        raise ValueError("truncated")
    return tag, i, i + ln


def _ber_oid(b: bytes) -> str:
    if not b or b[-1] & 0x80:
        raise ValueError("bad OID")
    arcs: list[int] = []
    v = 0
    for byte in b:
        v = (v << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(v)
            v = 0
    a0 = min(arcs[0] // 40, 2)
    return ".".join(map(str, (a0, arcs[0] - 40 * a0, *arcs[1:])))


def _ber_value(tag: int, b: bytes) -> str | int | None:
    if tag == 0x02:
        return int.from_bytes(b, "big", signed=True)
    if tag in (0x41, 0x42, 0x43, 0x46):  # Counter32, Gauge32/Unsigned32, TimeTicks, Counter64
        return int.from_bytes(b, "big", signed=False)
    if tag == 0x04:
        return _text_or_hex(b)
    if tag == 0x06:
        return _ber_oid(b)
    if tag == 0x40 and len(b) == 4:
        return ".".join(str(x) for x in b)
    if tag == 0x44:
        return "0x" + b.hex()
    if tag in (0x05, 0x80, 0x81, 0x82):
        return None
    raise ValueError(f"unexpected value tag {tag:#x}")


def parse_v2c_trap(buf: bytes) -> tuple[bytes, int, list[tuple[str, Any]]] | None:
    """(community, request id, varbinds) of an SNMPv2c TRAP message; None for anything else
    (v1, v3, informs, requests) so the caller hands it to pysnmp. Raises ValueError when the
    message claims to be a v2c trap but is malformed."""
    n = len(buf)
    tag, i, end = _tlv(buf, 0, n)
    if tag != 0x30:
        return None
    tag, a, b = _tlv(buf, i, end)
    if tag != 0x02 or buf[a:b] != b"\x01":  # version 1 = SNMPv2c
        return None
    tag, a, i = _tlv(buf, b, end)
    if tag != 0x04:
        return None
    community = buf[a:i]
    tag, i, pend = _tlv(buf, i, end)
    if tag != 0xA7:  # SNMPv2-Trap-PDU
        return None
    tag, a, i = _tlv(buf, i, pend)
    request_id = int.from_bytes(buf[a:i], "big", signed=True)
    for _ in range(2):  # error-status, error-index
        tag, a, i = _tlv(buf, i, pend)
    tag, i, vend = _tlv(buf, i, pend)
    if tag != 0x30:
        raise ValueError("varbind list expected")
    out: list[tuple[str, Any]] = []
    while i < vend:
        tag, j, vbend = _tlv(buf, i, vend)
        if tag != 0x30:
            raise ValueError("varbind expected")
        tag, a, j = _tlv(buf, j, vbend)
        if tag != 0x06:
            raise ValueError("OID expected")
        oid = _ber_oid(buf[a:j])
        tag, a, j = _tlv(buf, j, vbend)
        out.append((oid, _ber_value(tag, buf[a:j])))
        i = vbend
    return community, request_id, out


def _oid_match(oid: str, prefix: str) -> bool:
    return oid == prefix or oid.startswith(prefix + ".")


def alarm_payload(
    cfg: SnmpSourceConfig, *, alarm_id: str, source_address: str, varbinds: list[tuple[str, Any]]
) -> dict[str, Any]:
    """The ``alarm.v1`` payload of one notification (varbinds already decoded)."""
    trap_oid = next((str(v) for o, v in varbinds if o == SNMP_TRAP_OID), None)
    rest = [(o, v) for o, v in varbinds if o not in (SNMP_TRAP_OID, SYS_UPTIME)]
    severity, kind = cfg.default_severity, "other"
    for rule in cfg.severity_rules:
        if trap_oid is None or not _oid_match(trap_oid, rule.trap_oid):
            continue
        if rule.varbind_oid is not None and not any(
            _oid_match(o, rule.varbind_oid) and (rule.equals is None or str(v) == rule.equals) for o, v in rest
        ):
            continue
        severity, kind = rule.severity, rule.kind or "other"
        break
    circuits = [str(v) for o, v in rest if v not in (None, "") and any(_oid_match(o, p) for p in cfg.circuit_id_oids)]
    text = next((str(v) for o, v in rest if cfg.text_oid and _oid_match(o, cfg.text_oid)), None)
    out: dict[str, Any] = {
        "alarm_id": alarm_id,
        "source_address": source_address,
        "kind": kind,
        "severity": severity,
        "circuit_ids": circuits,
        "raised_at": datetime.now(UTC).isoformat(),
        "varbinds": [{"oid": o, "value": v} for o, v in rest][:500],
    }
    if trap_oid:
        out["trap_oid"] = trap_oid
    if text:
        out["text"] = text[:2000]
    return out


# ---------------------------------------------------------------------------------------------
# receiver


@dataclass
class _Item:
    envelope: Envelope
    ack: Callable[[], None] | None  # informs: send the response (on the loop thread)


class _AckAfterEmitReceiver:
    """pysnmp NotificationReceiver that hands each PDU to ``on_pdu(info, ack)``; for informs
    ``ack`` sends the response and must be called (on the loop) only once the data is safe."""

    def __init__(self, engine: Any, on_pdu: Callable[[dict[str, Any], Callable[[], None] | None], None]) -> None:
        from pysnmp.proto.api import v1, v2c

        self.types = (v1.TrapPDU.tagSet, v2c.SNMPv2TrapPDU.tagSet, v2c.InformRequestPDU.tagSet)
        self.on_pdu = on_pdu
        self.engine = engine
        self._community = ""
        engine.message_dispatcher.register_context_engine_id(b"", self.types, self.process_pdu)

        def store_community(_e: Any, _x: Any, variables: dict[str, Any], _c: Any) -> None:
            self._community = variables.get("communityName", "")

        engine.observer.register_observer(store_community, "rfc2576.processIncomingMsg")

    def process_pdu(
        self, engine: Any, mp_model: Any, sec_model: Any, sec_name: Any, sec_level: Any, ctx_engine_id: Any,
        ctx_name: Any, pdu_version: Any, pdu: Any, max_size: Any, state_ref: Any,
    ) -> None:
        from pysnmp.proto import rfc3411
        from pysnmp.proto.api import v2c
        from pysnmp.proto.proxy import rfc2576

        orig = None
        if mp_model == 0:
            orig = pdu
            pdu = rfc2576.v1_to_v2(pdu, snmpTrapCommunity=self._community)
        try:
            _domain, addr = engine.message_dispatcher.get_transport_info(state_ref)
            address = f"{addr[0]}:{addr[1]}"
        except Exception:  # noqa: BLE001 - transport info is best effort
            address = "unknown"
        varbinds = v2c.apiPDU.get_varbinds(pdu)
        info = {
            "address": address,
            "request_id": int(v2c.apiPDU.get_request_id(pdu)) if mp_model != 0 else 0,
            "varbinds": [(".".join(str(x) for x in o.asTuple()), decode_value(v)) for o, v in varbinds],
            "security_name": str(sec_name),
            "version": {0: "v1", 1: "v2c", 3: "v3"}.get(int(mp_model), str(mp_model)),
        }
        ack = None
        if pdu.tagSet in rfc3411.CONFIRMED_CLASS_PDUS:
            rsp = v2c.apiPDU.get_response(pdu)
            v2c.apiPDU.set_error_status(rsp, "noError")
            v2c.apiPDU.set_error_index(rsp, 0)
            v2c.apiPDU.set_varbinds(rsp, varbinds)
            if mp_model == 0:
                rsp = rfc2576.v2_to_v1(rsp, orig)

            def ack() -> None:
                from pysnmp.proto import error

                with contextlib.suppress(error.StatusInformation):
                    engine.message_dispatcher.return_response_pdu(
                        engine, mp_model, sec_model, sec_name, sec_level, ctx_engine_id, ctx_name, pdu_version,
                        rsp, max_size, state_ref, {},
                    )

        self.on_pdu(info, ack)


class SnmpTrapReceiver(Source[SnmpSourceConfig]):
    adapter_name = "snmp"

    def __init__(self, config: SnmpSourceConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._stop = threading.Event()
        self._q: queue.Queue[_Item] = queue.Queue(maxsize=config.max_pending)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._sock: socket.socket | None = None
        self.received = 0
        self.errors = 0
        self.dropped = 0
        self._counters: dict[str, Any] = {}
        self.port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def start(self, emit: Emit) -> None:
        if self.running:
            return
        self._stop.clear()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.receive_buffer)
        if self.config.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((self.config.listen_host, self.config.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"snmp: cannot listen on udp {self.config.listen_host}:{self.config.port}: {exc}") from exc
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        failure: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._run_loop, args=(ready, failure), name=f"snmp-rx-{self.name}", daemon=True),
            threading.Thread(target=self._emitter, args=(emit,), name=f"snmp-emit-{self.name}", daemon=True),
        ]
        self._threads[0].start()
        ready.wait(10)
        if failure:
            self.stop()
            raise failure[0]
        self._threads[1].start()
        self.log.info("snmp_receiver_started", port=self.port)

    def _setup_engine(self, loop: asyncio.AbstractEventLoop) -> Any:
        from pysnmp.carrier.asyncio.dgram import udp
        from pysnmp.entity import config as pcfg
        from pysnmp.entity import engine as pengine
        from pysnmp.proto.api import v2c

        c = self.config
        kw = {"snmpEngineID": v2c.OctetString(hexValue=c.engine_id.removeprefix("0x"))} if c.engine_id else {}
        eng = pengine.SnmpEngine(**kw)
        transport = udp.UdpTransport(loop=loop).open_server_mode(sock=self._sock)
        pcfg.add_transport(eng, udp.DOMAIN_NAME, transport)
        for i, ref in enumerate(c.communities):
            pcfg.add_v1_system(eng, f"c{i}", resolve(ref, loc=f"communities.{i}").get_secret_value())
        for i, u in enumerate(c.v3_users):
            args = _v3_args(u, f"v3_users.{i}")
            for eid in [None, *u.engine_ids]:  # own engine (informs) + each trap sender
                extra = {"securityEngineId": v2c.OctetString(hexValue=eid.removeprefix("0x"))} if eid else {}
                pcfg.add_v3_user(eng, u.user, *args, **extra)
        _AckAfterEmitReceiver(eng, self._on_pdu)
        mib = eng.get_mib_builder()
        for mod, sym in (
            ("__SNMPv2-MIB", "snmpInASNParseErrs"), ("__SNMPv2-MIB", "snmpInBadVersions"),
            ("__SNMPv2-MIB", "snmpInBadCommunityNames"), ("__SNMP-USER-BASED-SM-MIB", "usmStatsUnknownUserNames"),
            ("__SNMP-USER-BASED-SM-MIB", "usmStatsWrongDigests"), ("__SNMP-USER-BASED-SM-MIB", "usmStatsDecryptionErrors"),
        ):
            with contextlib.suppress(Exception):
                (self._counters[sym],) = mib.import_symbols(mod, sym)
        # a packet that makes pysnmp raise is counted and dropped; the loop keeps running
        cb = getattr(transport, "_callback_function", None)
        communities = {resolve(r, loc="communities").get_secret_value().encode() for r in c.communities}
        fast = c.fast_path and bool(communities)
        if cb is not None:
            def guarded(*a: Any) -> Any:
                try:
                    if fast:  # v2c traps of a known community skip the engine (3 pyasn1 decodes)
                        try:
                            hit = parse_v2c_trap(a[2])
                        except ValueError:
                            hit = None  # let pysnmp judge (and count) it
                        if hit is not None and hit[0] in communities:
                            addr = a[1]
                            self._on_pdu({"address": f"{addr[0]}:{addr[1]}", "request_id": hit[1], "varbinds": hit[2],
                                          "security_name": "", "version": "v2c"}, None)
                            return None
                    return cb(*a)
                except Exception as exc:  # noqa: BLE001 - one bad packet must not stop the receiver
                    self.errors += 1
                    self.log.warning("snmp_packet_dropped", error=type(exc).__name__)
                    return None

            transport._callback_function = guarded
        eng.transport_dispatcher.job_started(1)
        return eng

    def _run_loop(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop

        def on_loop_error(_loop: Any, context: dict[str, Any]) -> None:
            self.errors += 1
            exc = context.get("exception")
            self.log.warning("snmp_packet_dropped", error=type(exc).__name__ if exc else context.get("message"))

        loop.set_exception_handler(on_loop_error)
        try:
            eng = self._setup_engine(loop)
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                eng.close_dispatcher()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def _on_pdu(self, info: dict[str, Any], ack: Callable[[], None] | None) -> None:
        self.received += 1
        host = info["address"].rsplit(":", 1)[0]
        if ack is None:  # a trap is never sent again: unique per arrival
            aid = stable_id(f"{info['address']}|{info['request_id']}|{info['varbinds']!r}|{time.time_ns()}", datetime.now(UTC))
        else:  # an inform retransmission has a new request id but the same sender, sysUpTime and varbinds
            aid = stable_id(f"{info['address']}|{info['version']}|{info['security_name']}|{info['varbinds']!r}")
        payload = alarm_payload(self.config, alarm_id=aid, source_address=host, varbinds=info["varbinds"])
        env = self.config.envelope.make(payload, id=aid, headers={"snmp_version": info["version"]})
        try:
            self._q.put_nowait(_Item(env, ack))
        except queue.Full:
            self.dropped += 1
            self.log.warning("snmp_notification_dropped", reason="max_pending reached", inform=ack is not None)

    # -- emitting ------------------------------------------------------------------------------
    def _emitter(self, emit: Emit) -> None:
        c = self.config
        held: list[_Item] = []  # traps whose emit failed: retried from memory
        delay = 0.2
        while True:
            stopping = self._stop.is_set()
            items = held
            held = []
            try:
                if not items:
                    items.append(self._q.get(timeout=0.1))
                deadline = time.monotonic() + c.batch_wait
                while len(items) < c.emit_batch:
                    left = deadline - time.monotonic()
                    try:
                        items.append(self._q.get(timeout=left) if left > 0 else self._q.get_nowait())
                    except queue.Empty:
                        break
            except queue.Empty:
                if stopping:
                    return
                continue
            t0 = time.perf_counter()
            try:
                emit([i.envelope for i in items])
            except Exception as exc:  # noqa: BLE001 - recorded; informs unanswered, traps held
                self.tracker.record_error(exc)
                self.log.warning("snmp_emit_failed", error=type(exc).__name__, reason=str(exc)[:300], n=len(items))
                held = [i for i in items if i.ack is None]
                if len(held) > c.max_pending:
                    self.dropped += len(held) - c.max_pending
                    held = held[-c.max_pending:]
                if stopping:
                    if held:
                        self.dropped += len(held)
                        self.log.warning("snmp_notification_dropped", reason="stopped while the bus was down", n=len(held))
                    return
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            loop = self._loop
            acks = [i.ack for i in items if i.ack is not None]
            if acks and loop is not None and not loop.is_closed():
                def send_acks(acks: list[Callable[[], None]] = acks) -> None:
                    for a in acks:
                        a()

                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(send_acks)
            self.tracker.record_success(time.perf_counter() - t0, len(items))

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        loop = self._loop
        if len(self._threads) > 1 and self._threads[1].is_alive():
            self._threads[1].join(timeout)  # emitter drains first (acks go out while the loop runs)
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        for t in self._threads:
            t.join(timeout)
        self._threads = []
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._loop = None

    def counters(self) -> dict[str, int]:
        out = {"received": self.received, "dropped": self.dropped, "packet_errors": self.errors}
        vals: dict[str, int] = {}
        for k, v in self._counters.items():
            with contextlib.suppress(Exception):  # a counter never incremented has no value yet
                vals[k] = int(v.syntax)
        out["malformed"] = vals.get("snmpInASNParseErrs", 0) + vals.get("snmpInBadVersions", 0) + self.errors
        out["auth_failures"] = sum(
            vals.get(k, 0) for k in ("snmpInBadCommunityNames", "usmStatsUnknownUserNames", "usmStatsWrongDigests",
                                     "usmStatsDecryptionErrors")
        )
        out["pending"] = self._q.qsize()
        return out

    def health(self) -> Any:
        h = super().health()
        h.detail.update(self.counters(), port=self.port, connected=self.running)  # "connected": listening
        return h


def _v3_args(u: V3User, loc: str) -> tuple[Any, ...]:
    from pysnmp.entity import config as pcfg

    auth = getattr(pcfg, _AUTH[u.auth_protocol])
    priv = getattr(pcfg, _PRIV[u.priv_protocol])
    akey = resolve(u.auth_key, loc=f"{loc}.auth_key").get_secret_value() if u.auth_key else None
    pkey = resolve(u.priv_key, loc=f"{loc}.priv_key").get_secret_value() if u.priv_key else None
    return auth, akey, priv, pkey


# ---------------------------------------------------------------------------------------------
# poller with a per-target lease


_AUTH_FAILURES = {"WrongDigest", "UnknownUserName", "UnknownSecurityName", "UnsupportedSecurityLevel",
                  "UnsupportedSecurityModel", "AuthorizationError"}  # pysnmp error indications: fix the config


class TargetLease:
    """One owner per key across processes: a row in ``adapter_state`` taken under a row lock."""

    def __init__(self, url: str, key: str, seconds: float) -> None:
        from esbhub.adapters.store import AdapterState, StateStore

        self.store = StateStore(url)
        self.table = AdapterState.__table__
        self.key = key
        self.seconds = seconds
        self.owner = uuid.uuid4().hex

    def acquire(self) -> bool:
        import sqlalchemy as sa

        t = self.table
        now = time.time()
        value = {"owner": self.owner, "until": now + self.seconds}
        stamp = datetime.now(UTC)
        try:
            with self.store.engine.begin() as c:
                row = c.execute(
                    sa.select(t.c.value, t.c.updated_at).where(t.c.key == self.key).with_for_update()
                ).first()
                if row is None:
                    c.execute(sa.insert(t).values(key=self.key, value=value, updated_at=stamp))
                    return True
                cur = row[0] or {}
                if cur.get("owner") != self.owner and float(cur.get("until", 0)) > now:
                    return False
                # compare-and-set on the version read: correct even where FOR UPDATE is a no-op (SQLite)
                n = c.execute(
                    sa.update(t).where(t.c.key == self.key, t.c.updated_at == row[1]).values(value=value, updated_at=stamp)
                ).rowcount
                return n == 1
        except (sa.exc.IntegrityError, sa.exc.OperationalError):
            return False  # another worker took it at the same moment (or the database is busy)

    def release(self) -> None:
        import sqlalchemy as sa

        t = self.table
        with contextlib.suppress(sa.exc.SQLAlchemyError), self.store.engine.begin() as c:
            row = c.execute(sa.select(t.c.value).where(t.c.key == self.key).with_for_update()).first()
            if row is not None and (row[0] or {}).get("owner") == self.owner:
                c.execute(sa.update(t).where(t.c.key == self.key).values(
                    value={"owner": None, "until": 0}, updated_at=datetime.now(UTC)))


class SnmpPoller(PollingSource[SnmpSourceConfig]):
    adapter_name = "snmp"

    def __init__(self, config: SnmpSourceConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._lease: TargetLease | None = None
        self.target = f"{config.target_host}:{config.target_port}"

    def lease(self) -> TargetLease:
        if self._lease is None:
            url = self.config.state_url
            if url is None:
                from esbhub.config import Settings

                url = Settings().effective_database_url
            secs = self.config.lease_seconds or 3 * self.config.poll_interval
            self._lease = TargetLease(resolve_url(check_url_secret(url)), f"snmp-poll:{self.target}", secs)
        return self._lease

    def poll_once(self, emit: Emit) -> int:
        if not self.lease().acquire():
            self.tracker.detail["lease"] = "held by another worker"
            return 0
        self.tracker.detail["lease"] = "owned"
        t0 = time.perf_counter()
        values = asyncio.run(self._fetch())
        payload = {"target": self.target, "polled_at": datetime.now(UTC).isoformat(),
                   "values": [{"oid": o, "value": v} for o, v in values]}
        emit([self.config.envelope.make(payload)])
        self.tracker.record_success(time.perf_counter() - t0, 1)
        return 1

    def batch_full(self, n: int) -> bool:
        return False

    async def _fetch(self) -> list[tuple[str, Any]]:
        from pysnmp.hlapi.v3arch.asyncio import (
            CommunityData,
            ContextData,
            ObjectIdentity,
            ObjectType,
            SnmpEngine,
            UdpTransportTarget,
            UsmUserData,
            get_cmd,
            walk_cmd,
        )

        c = self.config
        if c.version == "v2c":
            assert c.community is not None
            auth: Any = CommunityData(resolve(c.community, loc="community").get_secret_value(), mpModel=1)  # noqa: S508 - v2c is what the agent speaks
        else:
            u = c.v3_users[0]
            ap, ak, pp, pk = _v3_args(u, "v3_users.0")
            auth = UsmUserData(u.user, authKey=ak, privKey=pk, authProtocol=ap, privProtocol=pp)
        eng = SnmpEngine()
        try:
            try:
                target = await UdpTransportTarget.create(
                    (c.target_host, c.target_port), timeout=c.timeout, retries=c.retries
                )
            except Exception as exc:
                raise TransientError(f"snmp poll {self.target}: {type(exc).__name__}: {exc}") from exc
            out: list[tuple[str, Any]] = []
            if c.get_oids:
                err, status, index, vbs = await get_cmd(
                    eng, auth, target, ContextData(), *[ObjectType(ObjectIdentity(o)) for o in c.get_oids],
                    lookupMib=False,
                )
                self._check(err, status, index)
                out += [(".".join(str(x) for x in o.asTuple()), decode_value(v)) for o, v in vbs]
            for root in c.walk_oids:
                async for err, status, index, vbs in walk_cmd(
                    eng, auth, target, ContextData(), ObjectType(ObjectIdentity(root)),
                    lookupMib=False, lexicographicMode=False, maxRows=c.max_rows,
                ):
                    self._check(err, status, index)
                    out += [(".".join(str(x) for x in o.asTuple()), decode_value(v)) for o, v in vbs]
            return out
        finally:
            eng.close_dispatcher()

    def _check(self, err: Any, status: Any, index: Any) -> None:
        if err:
            text = str(err)
            if type(err).__name__ in _AUTH_FAILURES:
                raise PermanentError(f"snmp poll {self.target}: {text} (check the v3 user and keys)")
            raise TransientError(f"snmp poll {self.target}: {text}")
        if status:
            raise PermanentError(f"snmp poll {self.target}: {status.prettyPrint()} at varbind {int(index)}")

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self._lease is not None:
            self._lease.release()


class SnmpSource(Source[SnmpSourceConfig]):
    """``mode: trap`` → :class:`SnmpTrapReceiver`; ``mode: poll`` → :class:`SnmpPoller`."""

    adapter_name = "snmp"

    def __new__(cls, config: SnmpSourceConfig, *, name: str = "") -> Any:  # noqa: D102
        impl = SnmpTrapReceiver if config.mode == "trap" else SnmpPoller
        return impl(config, name=name)

    def start(self, emit: Emit) -> None:  # pragma: no cover - never instantiated
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:  # pragma: no cover
        raise NotImplementedError


SPEC = AdapterSpec(
    name="snmp",
    config_model=SnmpSourceConfig,
    source_cls=SnmpSource,
    description="SNMP (pysnmp 7): trap/inform receiver for v1/v2c and v3 (authPriv) making alarm.v1 envelopes "
    "(severity by trap OID/varbind rules, circuit ids from a varbind), informs acknowledged only after emit "
    "returned, malformed packets counted and ignored; GET/WALK poller on a schedule with one poller per target "
    "across all workers (a lease row).",
)
