"""File and SNMP adapter throughput, each beside a floor measured in the same run.

    .venv/bin/python bench/adapters_files.py [--lines 100000] [--traps 20000] [--out docs/adapters/benchmarks_files.md]

* SFTP: a ``--lines``-line GB18030 fixed-width bank file (byte-positioned columns, Chinese names,
  implied-decimal amounts) on an OpenSSH sshd started here → records on the bus. Floors: plain
  ``curl sftp://`` of the same file, and paramiko's raw ``getfo`` (the transfer the adapter does).
  Adapter rows: into a counting no-op ``emit`` (what the adapter costs: transfer + decode + parse
  + envelopes) and into the embedded bus (durable, what a real run costs).
* SNMP: pre-encoded v2c traps (distinct request ids and a counter varbind) sent over UDP at a
  paced rate to the receiver; received/sent and the receive rate per target rate, "no loss"
  when every counter value arrived. Into a no-op emit and into the embedded bus.

Not a test: no assertions. Run on an idle machine for numbers worth comparing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esbhub.adapters.base import broker_emitter, parse_config  # noqa: E402
from esbhub.adapters.sftp import SftpSource, SftpSourceConfig  # noqa: E402
from esbhub.adapters.snmp import SnmpSourceConfig, SnmpTrapReceiver  # noqa: E402
from tests.adapters.peers_daemons import Sshd  # noqa: E402

ROWS: list[tuple[str, str, str, int, float]] = []
BANK_COLUMNS = [
    {"name": "account", "start": 1, "width": 19},
    {"name": "name", "start": 20, "width": 40},
    {"name": "amount", "start": 60, "width": 15, "type": "decimal", "decimal": 2},
    {"name": "value_date", "start": 75, "width": 8, "type": "date"},
    {"name": "currency", "start": 83, "width": 3},
    {"name": "memo", "start": 86, "width": 30},
]


def rec(adapter: str, direction: str, what: str, n: int, secs: float) -> None:
    ROWS.append((adapter, direction, what, n, secs))
    print(f"{adapter:5} {direction:3} {what:62} {n:8d} in {secs:7.2f}s = {n / secs if secs else 0:11,.0f} rec/s",
          flush=True)


def bank_file(lines: int) -> bytes:
    names = ["中国移动通信集团广东有限公司", "深圳市腾讯计算机系统有限公司", "华为技术有限公司", "招商银行股份有限公司深圳分行"]
    out = [b"H" + datetime.now(UTC).strftime("%Y%m%d").encode() + b"BANKSTATEMENT".ljust(107)]
    for i in range(lines):
        name = names[i % len(names)].encode("gb18030")[:40]
        memo = f"代发工资{i % 97}".encode("gb18030")
        out.append(
            f"{6222020000000000000 + i:019d}".encode() + name + b" " * (40 - len(name)) + f"{i * 137 % 10**12:015d}".encode()
            + b"20260131" + b"CNY" + memo + b" " * (30 - len(memo))
        )
    out.append(b"T" + f"{lines:010d}".encode().ljust(114))
    return b"\r\n".join(out) + b"\r\n"


class Count:
    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self, envs) -> None:
        with self.lock:
            self.n += len(envs)


# --------------------------------------------------------------------------------------------- sftp
def bench_sftp(lines: int, tmp: Path) -> None:
    data = bank_file(lines)
    inbox = tmp / "in"
    inbox.mkdir()
    print(f"bank file: {lines} lines, {len(data) / 1e6:.1f} MB GB18030", flush=True)
    with Sshd(tmp) as d:
        (inbox / "bank.txt").write_bytes(data)
        # floor 1: plain curl over sftp (libssh2)
        host_b64 = Path(str(d.host_key) + ".pub").read_text().split()[1]
        import base64

        fp = base64.b64encode(hashlib.sha256(base64.b64decode(host_b64)).digest()).decode().rstrip("=")
        argv = ["curl", "-sS", "-o", "/dev/null", "-u", "root:", "--key", str(d.client_key), "--pubkey",
                str(d.client_key) + ".pub", "--hostpubsha256", fp, f"sftp://127.0.0.1:{d.port}{inbox / 'bank.txt'}"]
        t0 = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, timeout=300, check=False)  # noqa: S603
        if r.returncode == 0:
            rec("sftp", "in", "floor: curl sftp:// transfer of the file", lines, time.perf_counter() - t0)
        else:
            print(f"curl sftp:// failed ({r.returncode}: {r.stderr.decode()[:200]}); scp used as the floor")
            t0 = time.perf_counter()
            subprocess.run(["scp", "-q", "-P", str(d.port), "-i", str(d.client_key), "-o",  # noqa: S603, S607
                            f"UserKnownHostsFile={d.known_hosts}", f"root@127.0.0.1:{inbox / 'bank.txt'}", "/dev/null"],
                           check=True, timeout=300)
            rec("sftp", "in", "floor: scp transfer of the file", lines, time.perf_counter() - t0)

        base = {"host": "127.0.0.1", "port": d.port, "username": "root", "private_key_file": str(d.client_key),
                "known_hosts": str(d.known_hosts), "timeout": 30, "directory": str(inbox), "pattern": "*.txt",
                "format": {"type": "fixed", "skip_lines": 1, "skip_trailer_lines": 1, "columns": BANK_COLUMNS},
                "encoding": "gb18030", "emit_batch": 5000, "envelope": {"type": "payment.v1", "source": "bank"}}

        # floor 2: the raw transfer the adapter does (paramiko getfo)
        from esbhub.adapters.sftp import SftpFS

        fs = SftpFS(parse_config(SftpSourceConfig, {**base, "state_url": "sqlite://"}))
        t0 = time.perf_counter()
        raw = fs.read(str(inbox / "bank.txt"))
        rec("sftp", "in", "floor: paramiko getfo of the file (no parsing)", lines, time.perf_counter() - t0)
        fs.close()
        assert len(raw) == len(data)

        def run(label: str, emit, state: str) -> None:
            (inbox / "bank.txt").write_bytes(data)
            shutil.rmtree(inbox / "archive", ignore_errors=True)
            src = SftpSource(parse_config(SftpSourceConfig, {**base, "state_url": state}), name="bench")
            src.poll_once(emit)  # first sighting (stable-file detection)
            t0 = time.perf_counter()
            n = src.poll_once(emit)
            rec("sftp", "in", label, n, time.perf_counter() - t0)
            src.close()

        run("poller → no-op emit (transfer+GB18030 decode+parse+envelopes)", Count(), f"sqlite:///{tmp / 's1.db'}")
        from esbhub.bus.broker import create_broker

        broker = create_broker(f"sqlite:///{tmp / 'bus.db'}")
        broker.connect()
        broker.declare_queue("bench.files", ["payment.v1"])
        run("poller → embedded bus (durable, batches of 5000)", broker_emitter(broker, timeout=120),
            f"sqlite:///{tmp / 's2.db'}")
        broker.close()


# --------------------------------------------------------------------------------------------- snmp
def trap_packets(n: int, community: str = "public") -> list[bytes]:
    from pyasn1.codec.ber import encoder
    from pysnmp.proto.api import v2c

    out = []
    for i in range(n):
        pdu = v2c.SNMPv2TrapPDU()
        v2c.apiTrapPDU.set_defaults(pdu)
        v2c.apiTrapPDU.set_request_id(pdu, i + 1)
        v2c.apiTrapPDU.set_varbinds(pdu, [
            (v2c.ObjectIdentifier("1.3.6.1.2.1.1.3.0"), v2c.TimeTicks(i)),
            (v2c.ObjectIdentifier("1.3.6.1.6.3.1.1.4.1.0"), v2c.ObjectIdentifier("1.3.6.1.6.3.1.1.5.3")),
            (v2c.ObjectIdentifier("1.3.6.1.4.1.9999.1.1"), v2c.Integer(i)),
            (v2c.ObjectIdentifier("1.3.6.1.4.1.9999.1.2"), v2c.OctetString(f"CIRC-{i:06d}")),
        ])
        msg = v2c.Message()
        v2c.apiMessage.set_defaults(msg)
        v2c.apiMessage.set_community(msg, community)
        v2c.apiMessage.set_pdu(msg, pdu)
        out.append(encoder.encode(msg))
    return out


def bench_snmp(n: int, tmp: Path) -> None:
    os.environ.setdefault("BENCH_SNMP_COMMUNITY", "public")
    packets = trap_packets(n)
    from esbhub.bus.broker import create_broker

    broker = create_broker(f"sqlite:///{tmp / 'snmpbus.db'}")
    broker.connect()
    broker.declare_queue("bench.alarms", ["alarm.v1"])
    for target in ("no-op emit", "embedded bus"):
        for rate in (1000, 2000, 5000, 10000, 0):
            got: set[int] = set()
            lock = threading.Lock()
            bus_emit = broker_emitter(broker, timeout=60) if target == "embedded bus" else None

            def emit(envs, bus_emit=bus_emit, got=got, lock=lock) -> None:
                if bus_emit is not None:
                    bus_emit(envs)
                with lock:
                    for e in envs:
                        got.update(int(v["value"]) for v in e.payload["varbinds"] if v["oid"] == "1.3.6.1.4.1.9999.1.1")

            rx = SnmpTrapReceiver(parse_config(SnmpSourceConfig, {
                "listen_host": "127.0.0.1", "port": 0, "communities": ["${env:BENCH_SNMP_COMMUNITY}"],
                "circuit_id_oids": ["1.3.6.1.4.1.9999.1.2"], "emit_batch": 2000}), name="bench")
            rx.start(emit)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            t0 = time.perf_counter()
            for i, p in enumerate(packets):
                if rate:
                    ahead = i / rate - (time.perf_counter() - t0)
                    if ahead > 0.001:
                        time.sleep(ahead)
                s.sendto(p, ("127.0.0.1", rx.port))
            sent_s = time.perf_counter() - t0
            deadline = time.monotonic() + 30
            last, still = -1, time.monotonic()
            while time.monotonic() < deadline:
                with lock:
                    k = len(got)
                if k >= n:
                    break
                if k != last:
                    last, still = k, time.monotonic()
                elif time.monotonic() - still > 2:
                    break  # nothing more is coming: the rest was lost
                time.sleep(0.01)
            secs = time.perf_counter() - t0
            rx.stop()
            s.close()
            lost = n - len(got)
            label = f"traps {'unpaced' if not rate else f'at {rate}/s'} → {target}: " + (
                "no loss" if not lost else f"{lost} lost ({lost / n:.1%})")
            rec("snmp", "in", label, len(got), secs)
            print(f"      sent {n} in {sent_s:.2f}s ({n / sent_s:,.0f}/s)", flush=True)
    broker.close()


NOTES = """
Reading the numbers:

* **SFTP**: the transfer is not the cost — paramiko moves the 11.7 MB file in a fraction of a
  second, faster than a `curl sftp://` process. The poller's time is per record: strict GB18030
  decoding of each line and each byte-positioned column, decimal/date conversion (dates cached),
  and building one validated `Envelope` with a stable id per record (about half of the time).
  Into the embedded bus the durable commit adds roughly a third. The whole file is parsed before
  the first emit, so a file with a bad line never puts half of its records on the bus.
* **SNMP**: SNMPv2c traps of a known community are read by the adapter's own BER reader
  (`fast_path`, on by default); informs, v1 and v3 go through the pysnmp engine, several times
  slower per message. "no loss" rows are sustained rates; above them the receiver falls behind
  and the kernel's UDP receive buffer overflows (the adapter asks for `receive_buffer` = 4 MiB,
  which `net.core.rmem_max` allows on this host; each queued datagram costs about 1 KiB of it, so
  a burst of a few thousand traps is absorbed, a sustained overload is not). Traps are
  unconfirmed UDP: a sender that must not lose alarms under load should send informs
  (acknowledged only after emit, retransmitted otherwise).
"""


def write_md(path: Path, args: argparse.Namespace) -> None:
    load = os.getloadavg()
    lines = [
        "# File and SNMP adapter benchmark",
        "",
        f"`bench/adapters_files.py --lines {args.lines} --traps {args.traps}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"load average {load[0]:.2f}. Other work shared the machine; compare rows of one run, not runs.",
        "",
        "| adapter | dir | what | records | seconds | records/s |",
        "|---|---|---|---:|---:|---:|",
    ]
    for a, d, w, n, s in ROWS:
        lines.append(f"| {a} | {d} | {w} | {n:,} | {s:.2f} | {n / s if s else 0:,.0f} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + NOTES, encoding="utf-8")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--traps", type=int, default=20_000)
    ap.add_argument("--only", choices=["sftp", "snmp"], default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="esbhub-bench-files-") as t:
        tmp = Path(t)
        if args.only in (None, "sftp"):
            bench_sftp(args.lines, tmp)
        if args.only in (None, "snmp"):
            bench_snmp(args.traps, tmp)
    if args.out:
        write_md(args.out, args)


if __name__ == "__main__":
    main()
