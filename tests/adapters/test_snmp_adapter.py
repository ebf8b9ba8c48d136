"""SNMP receiver against net-snmp's snmptrap / snmpinform (v2c and v3 authPriv), poller against a
real snmpd started here."""

from __future__ import annotations

import socket
import subprocess
import threading

import pytest
from waiting import wait_for

from esbhub.adapters.base import parse_config
from esbhub.adapters.snmp import SnmpPoller, SnmpSource, SnmpSourceConfig, SnmpTrapReceiver
from esbhub.errors import PermanentError, TransientError

from .peers import free_port
from .peers_daemons import Snmpd

CIRCUIT = "1.3.6.1.4.1.9999.1.2"
LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"
V3 = ["-u", "nms", "-l", "authPriv", "-a", "SHA", "-A", "auth-pass-1", "-x", "AES", "-X", "priv-pass-1"]
SENDER_ENGINE = "0x80001f8880e9630000d61ff449"


@pytest.fixture
def secrets(monkeypatch):
    monkeypatch.setenv("T_SNMP_COMMUNITY", "public")
    monkeypatch.setenv("T_SNMP_AUTH", "auth-pass-1")
    monkeypatch.setenv("T_SNMP_PRIV", "priv-pass-1")


def receiver_cfg(**kw) -> SnmpSourceConfig:
    base = {
        "listen_host": "127.0.0.1", "port": 0, "communities": ["${env:T_SNMP_COMMUNITY}"],
        "v3_users": [{"user": "nms", "auth_protocol": "SHA", "auth_key": "${env:T_SNMP_AUTH}", "priv_protocol": "AES",
                      "priv_key": "${env:T_SNMP_PRIV}", "engine_ids": [SENDER_ENGINE]}],
        "circuit_id_oids": [CIRCUIT], "text_oid": "1.3.6.1.4.1.9999.1.3",
        "severity_rules": [
            {"trap_oid": LINK_DOWN, "varbind_oid": "1.3.6.1.4.1.9999.1.4", "equals": "1", "severity": "critical",
             "kind": "circuit_down"},
            {"trap_oid": LINK_DOWN, "severity": "minor", "kind": "port_down"},
        ],
    }
    base.update(kw)
    return parse_config(SnmpSourceConfig, base)


def send(tool: str, port: int, *args: str, version: list[str] | None = None, wait: bool = True, **kw):
    argv = [f"/usr/bin/{tool}", *(version or ["-v2c", "-c", "public"]), *kw.pop("opts", []), f"udp:127.0.0.1:{port}",
            "", *args]
    if not wait:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)  # noqa: S603


class Collect:
    def __init__(self) -> None:
        self.envs: list = []
        self.lock = threading.Lock()

    def __call__(self, envs) -> None:
        with self.lock:
            self.envs.extend(envs)


@pytest.fixture
def rx(secrets):
    made: list[SnmpTrapReceiver] = []

    def make(emit, **kw) -> SnmpTrapReceiver:
        r = SnmpSource(receiver_cfg(**kw), name="nms")
        assert isinstance(r, SnmpTrapReceiver)
        r.start(emit)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def test_v2c_trap_becomes_an_alarm_with_severity_by_rule_circuit_ids_and_text(rx):
    got = Collect()
    r = rx(got)
    res = send("snmptrap", r.port, LINK_DOWN, CIRCUIT, "s", "CIRC-BJ-0001", "1.3.6.1.4.1.9999.1.4", "i", "1",
               "1.3.6.1.4.1.9999.1.3", "s", "光纤中断 fibre cut")
    assert res.returncode == 0, res.stderr
    send("snmptrap", r.port, LINK_DOWN, "1.3.6.1.2.1.2.2.1.1.7", "i", "7")
    wait_for(lambda: len(got.envs) == 2, 10, what="two alarms")
    a, b = sorted((e.payload for e in got.envs), key=lambda p: p["severity"])
    assert a["severity"] == "critical" and a["kind"] == "circuit_down" and a["circuit_ids"] == ["CIRC-BJ-0001"]
    assert a["trap_oid"] == LINK_DOWN and a["source_address"] == "127.0.0.1" and a["text"] == "光纤中断 fibre cut"
    assert {"oid": "1.3.6.1.4.1.9999.1.4", "value": 1} in a["varbinds"]
    assert b["severity"] == "minor" and b["kind"] == "port_down" and b["circuit_ids"] == []
    from esbhub.schemas import validate_payload

    for e in got.envs:
        assert e.type == "alarm.v1" and e.payload["alarm_id"] == e.id
        validate_payload("alarm.v1", e.payload)


def test_v3_authpriv_trap_and_inform_are_received_and_a_wrong_key_is_refused_and_counted(rx):
    got = Collect()
    r = rx(got)
    res = send("snmptrap", r.port, "1.3.6.1.4.1.9999.0.3", CIRCUIT, "s", "C3", version=["-v3", "-e", SENDER_ENGINE, *V3])
    assert res.returncode == 0, res.stderr
    res = send("snmpinform", r.port, "1.3.6.1.4.1.9999.0.4", CIRCUIT, "s", "C4", version=["-v3", *V3],
               opts=["-t", "2", "-r", "1"])
    assert res.returncode == 0, res.stderr
    wait_for(lambda: len(got.envs) == 2, 10, what="v3 trap and inform")
    assert sorted(c for e in got.envs for c in e.payload["circuit_ids"]) == ["C3", "C4"]
    assert {e.headers["snmp_version"] for e in got.envs} == {"v3"}
    bad = [*V3[:-1], "wrong-priv-key"]
    bad[V3.index("-A") + 1] = "wrong-auth-key"
    send("snmptrap", r.port, "1.3.6.1.4.1.9999.0.5", version=["-v3", "-e", SENDER_ENGINE, *bad])
    wait_for(lambda: r.health().detail["auth_failures"] >= 1, 10, what="the refused trap counted")
    assert len(got.envs) == 2


def test_inform_is_acknowledged_only_after_emit_returned(rx):
    entered, release = threading.Event(), threading.Event()
    got = Collect()

    def slow_emit(envs):
        entered.set()
        release.wait(20)
        got(envs)

    r = rx(slow_emit)
    proc = send("snmpinform", r.port, "1.3.6.1.4.1.9999.0.1", CIRCUIT, "s", "C1", wait=False, opts=["-t", "10", "-r", "0"])
    try:
        assert entered.wait(10), "emit was called"
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(1.0)  # no response while the envelope is not yet on the bus
        release.set()
        assert proc.wait(10) == 0, proc.stderr.read()
        assert len(got.envs) == 1
    finally:
        release.set()
        proc.kill()
        proc.wait()


def test_inform_whose_emit_failed_is_retransmitted_by_the_sender_and_keeps_its_id(rx):
    attempts: list = []

    def flaky(envs):
        attempts.extend(envs)
        if len(attempts) == 1:
            raise TransientError("bus unavailable")

    r = rx(flaky)
    res = send("snmpinform", r.port, "1.3.6.1.4.1.9999.0.1", CIRCUIT, "s", "C9", opts=["-t", "1", "-r", "3"])
    assert res.returncode == 0, res.stderr
    assert len(attempts) == 2 and attempts[0].id == attempts[1].id
    assert "bus unavailable" in (r.health().last_error or "")


def test_garbage_packets_are_counted_and_the_receiver_keeps_running(rx):
    got = Collect()
    r = rx(got)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for junk in (b"\x00", b"\x30\x03abc", b"\xff" * 300, b"\x30\x82\xff\xff" + b"A" * 20,
                 bytes.fromhex("302902010104067075626c6963a71c0201")):
        s.sendto(junk, ("127.0.0.1", r.port))
    s.close()
    wait_for(lambda: r.health().detail["malformed"] >= 4, 10, what="malformed packets counted")
    assert send("snmptrap", r.port, "1.3.6.1.4.1.9999.0.8").returncode == 0
    wait_for(lambda: len(got.envs) == 1, 10, what="a good trap after the garbage")
    assert r.running and r.health().ok


# --------------------------------------------------------------------------------------------- poller


@pytest.fixture(scope="module")
def snmpd(tmp_path_factory):
    with Snmpd(tmp_path_factory.mktemp("snmpd")) as d:
        yield d


def poller_cfg(port: int, tmp_path, **kw) -> SnmpSourceConfig:
    base = {"mode": "poll", "target_host": "127.0.0.1", "target_port": port, "community": "${env:T_SNMP_COMMUNITY}",
            "get_oids": ["1.3.6.1.2.1.1.6.0", "1.3.6.1.2.1.1.4.0"], "walk_oids": ["1.3.6.1.2.1.1.9.1.2"],
            "timeout": 2, "retries": 0, "poll_interval": 5, "state_url": f"sqlite:///{tmp_path}/lease.db",
            "envelope": {"type": "alarm.v1", "source": "poller"}}
    base.update(kw)
    return parse_config(SnmpSourceConfig, base)


def test_poller_gets_and_walks_a_real_snmpd(snmpd, tmp_path, secrets):
    p = SnmpSource(poller_cfg(snmpd.port, tmp_path), name="poll")
    assert isinstance(p, SnmpPoller)
    got = Collect()
    assert p.poll_once(got) == 1
    vals = {v["oid"]: v["value"] for v in got.envs[0].payload["values"]}
    assert vals["1.3.6.1.2.1.1.6.0"] == "esbhub-test-lab" and vals["1.3.6.1.2.1.1.4.0"] == "noc@example.net"
    walked = [o for o in vals if o.startswith("1.3.6.1.2.1.1.9.1.2.")]
    assert len(walked) >= 3, vals  # sysORID table of the agent
    assert got.envs[0].payload["target"] == f"127.0.0.1:{snmpd.port}"


def test_one_poller_per_target_across_workers_and_takeover_after_stop(snmpd, tmp_path, secrets):
    a = SnmpSource(poller_cfg(snmpd.port, tmp_path, walk_oids=[]), name="w1")
    b = SnmpSource(poller_cfg(snmpd.port, tmp_path, walk_oids=[]), name="w2")
    got_a, got_b = Collect(), Collect()
    assert a.poll_once(got_a) == 1
    assert b.poll_once(got_b) == 0 and b.health().detail["lease"] == "held by another worker"
    assert a.poll_once(got_a) == 1  # the owner renews
    a.stop()  # releases the lease
    assert b.poll_once(got_b) == 1
    assert a.poll_once(got_a) == 0
    b.stop()


def test_poller_with_agent_down_raises_transient_within_the_timeout(tmp_path, secrets):
    p = SnmpSource(poller_cfg(free_port(), tmp_path, timeout=0.5), name="down")
    with pytest.raises(TransientError, match="snmp poll"):
        p.poll_once(Collect())
    p.stop()


def test_fast_v2c_trap_reader_decodes_like_the_pysnmp_engine(rx):
    args = [LINK_DOWN, CIRCUIT, "s", "CIRC-SZ-9", "1.3.6.1.4.1.9999.1.5", "i", "-42", "1.3.6.1.4.1.9999.1.6", "o",
            "1.3.6.1.4.1.9999.77", "1.3.6.1.4.1.9999.1.7", "a", "10.1.2.3", "1.3.6.1.4.1.9999.1.8", "t", "12345",
            "1.3.6.1.4.1.9999.1.9", "c", "4294967295", "1.3.6.1.4.1.9999.1.10", "u", "7",
            "1.3.6.1.4.1.9999.1.11", "x", "FF00AB", "1.3.6.1.4.1.9999.1.12", "s", "机房A"]
    fast, slow = Collect(), Collect()
    rf, rs = rx(fast), rx(slow, fast_path=False)
    for r in (rf, rs):
        assert send("snmptrap", r.port, *args).returncode == 0
    wait_for(lambda: len(fast.envs) == 1 and len(slow.envs) == 1, 10, what="both traps")
    strip = {"alarm_id", "raised_at"}
    a = {k: v for k, v in fast.envs[0].payload.items() if k not in strip}
    b = {k: v for k, v in slow.envs[0].payload.items() if k not in strip}
    assert a == b
    vals = {v["oid"]: v["value"] for v in a["varbinds"]}
    assert vals["1.3.6.1.4.1.9999.1.5"] == -42 and vals["1.3.6.1.4.1.9999.1.6"] == "1.3.6.1.4.1.9999.77"
    assert vals["1.3.6.1.4.1.9999.1.7"] == "10.1.2.3" and vals["1.3.6.1.4.1.9999.1.9"] == 4294967295
    assert vals["1.3.6.1.4.1.9999.1.11"] == "0xff00ab" and vals["1.3.6.1.4.1.9999.1.12"] == "机房A"


def test_fast_reader_refuses_truncated_messages_without_crashing():
    from esbhub.adapters.snmp import parse_v2c_trap

    good = bytes.fromhex("302902010104067075626c6963a71c0201010201000201003011300f06082b06010201010300430300")
    for cut in range(1, len(good)):
        try:
            parse_v2c_trap(good[:cut])
        except ValueError:
            pass
    assert parse_v2c_trap(bytes.fromhex("3006020100040161")) is None  # v1: not for the fast reader


def test_checked_in_reference_doc_is_up_to_date():
    from pathlib import Path

    from esbhub.adapters.docs import render
    from esbhub.adapters.registry import get_adapter

    path = Path(__file__).resolve().parents[2] / "docs" / "adapters" / "snmp.md"
    assert path.read_text(encoding="utf-8") == render(get_adapter("snmp")), "run: esbhub adapters docs"


def test_poller_speaks_v3_authpriv_and_a_wrong_auth_key_is_a_permanent_error(snmpd, tmp_path, secrets, monkeypatch):
    v3 = {"version": "v3", "community": None, "walk_oids": [],
          "v3_users": [{"user": "nms", "auth_protocol": "SHA", "auth_key": "${env:T_SNMP_AUTH}", "priv_protocol": "AES",
                        "priv_key": "${env:T_SNMP_PRIV}"}]}
    p = SnmpSource(poller_cfg(snmpd.port, tmp_path, **v3), name="v3")
    got = Collect()
    assert p.poll_once(got) == 1
    assert {v["oid"]: v["value"] for v in got.envs[0].payload["values"]}["1.3.6.1.2.1.1.6.0"] == "esbhub-test-lab"
    p.stop()
    monkeypatch.setenv("T_SNMP_AUTH", "not-the-key")
    bad = SnmpSource(poller_cfg(snmpd.port, tmp_path, timeout=0.5, state_url=f"sqlite:///{tmp_path}/l2.db", **v3))
    with pytest.raises(PermanentError, match="check the v3 user"):
        bad.poll_once(Collect())
    bad.stop()


def test_v1_trap_is_converted_to_an_alarm_with_its_v2_trap_oid(rx):
    got = Collect()
    r = rx(got)
    res = subprocess.run(["/usr/bin/snmptrap", "-v1", "-c", "public", f"udp:127.0.0.1:{r.port}", "1.3.6.1.4.1.9999",
                          "127.0.0.1", "2", "0", "", CIRCUIT, "s", "CIRC-V1"], capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: len(got.envs) == 1, 10, what="the v1 trap")
    p = got.envs[0].payload
    assert p["trap_oid"] == LINK_DOWN and p["severity"] == "minor" and p["circuit_ids"] == ["CIRC-V1"]
    assert got.envs[0].headers["snmp_version"] == "v1"


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_target_lease_has_exactly_one_winner_when_workers_race(db, tmp_path, request, unique):
    import sqlalchemy as sa

    from esbhub.adapters.snmp import TargetLease
    from esbhub.adapters.store import AdapterState

    url = f"sqlite:///{tmp_path}/lease.db" if db == "sqlite" else request.getfixturevalue("pg_url")
    key = f"snmp-poll:race-{unique}"
    leases = [TargetLease(url, key, 60) for _ in range(4)]
    t = AdapterState.__table__
    try:
        for i in range(6):
            with leases[0].store.engine.begin() as c:  # no lease yet (insert race) / an expired one (update race)
                if i % 2 == 0:
                    c.execute(sa.delete(t).where(t.c.key == key))
                else:
                    c.execute(sa.update(t).where(t.c.key == key).values(value={"owner": "gone", "until": 0}))
            barrier = threading.Barrier(len(leases))
            wins: list[bool] = []

            def go(lease: TargetLease, barrier: threading.Barrier = barrier, wins: list[bool] = wins) -> None:
                barrier.wait(5)
                wins.append(lease.acquire())

            threads = [threading.Thread(target=go, args=(lease,)) for lease in leases]
            for th in threads:
                th.start()
            for th in threads:
                th.join(10)
            assert wins.count(True) == 1, wins
    finally:
        with leases[0].store.engine.begin() as c:
            c.execute(sa.delete(t).where(t.c.key == key))


def test_workers_share_the_trap_port_with_reuse_port_and_nothing_is_lost(rx):
    from esbhub.errors import ConfigError

    got = Collect()
    a = rx(got, reuse_port=True)
    b = rx(got, reuse_port=True, port=a.port)
    for i in range(12):
        assert send("snmptrap", a.port, "1.3.6.1.4.1.9999.0.1", "1.3.6.1.4.1.9999.1.1", "i", str(i)).returncode == 0
    wait_for(lambda: len(got.envs) == 12, 10, what="all traps across both workers")
    assert a.health().detail["received"] + b.health().detail["received"] == 12
    with pytest.raises(ConfigError, match="cannot listen"):
        rx(got, port=a.port)  # without reuse_port the port is taken
