"""FTP poller and uploader against a real vsftpd started here (anonymous, write enabled, high port)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from waiting import wait_for

from esbhub.adapters.base import parse_config
from esbhub.adapters.ftp import FtpSink, FtpSinkConfig, FtpSource, FtpSourceConfig
from esbhub.adapters.store import StateStore
from esbhub.bus.envelope import Envelope
from esbhub.errors import TransientError

from .peers import free_port
from .peers_daemons import Vsftpd

BANK_FORMAT = {
    "type": "fixed",
    "skip_lines": 1,
    "skip_trailer_lines": 1,
    "columns": [
        {"name": "account", "start": 1, "width": 8},
        {"name": "name", "start": 9, "width": 20},
        {"name": "amount", "start": 29, "width": 12, "type": "decimal", "decimal": 2},
    ],
}


def bank_file(n: int, start: int = 0) -> bytes:
    lines = [b"H20260131BANKFILE"]
    for i in range(start, start + n):
        name = f"客户{i}号".encode("gb18030")
        lines.append(f"{i:08d}".encode() + name + b" " * (20 - len(name)) + f"{i * 101:012d}".encode())
    lines.append(f"T{n:08d}".encode())
    return b"\r\n".join(lines) + b"\r\n"


@pytest.fixture
def ftpd(tmp_path):
    with Vsftpd(tmp_path) as d:
        yield d


def cfg(ftpd: Vsftpd, tmp_path: Path, **kw) -> FtpSourceConfig:
    base = {
        "host": "127.0.0.1", "port": ftpd.port, "timeout": 3, "directory": "/in", "pattern": "*.txt",
        "format": BANK_FORMAT, "encoding": "gb18030", "poll_interval": 0.05,
        "envelope": {"type": "payment.v1", "source": "bank"}, "state_url": f"sqlite:///{tmp_path}/state.db",
    }
    base.update(kw)
    return parse_config(FtpSourceConfig, base)


class Collect:
    def __init__(self) -> None:
        self.envs: list[Envelope] = []
        self.calls = 0

    def __call__(self, envs) -> None:
        self.calls += 1
        self.envs.extend(envs)


def poll_until(src, emit, cond, polls: int = 20) -> None:
    for _ in range(polls):
        src.poll_once(emit)
        if cond():
            return
    raise AssertionError("condition not reached after polling")


def test_gb18030_bank_file_becomes_one_envelope_per_record_and_is_archived_once(ftpd, tmp_path):
    (ftpd.inbox / "pay_0131.txt").write_bytes(bank_file(3))
    (ftpd.inbox / "ignored.csv").write_bytes(b"x")
    src = FtpSource(cfg(ftpd, tmp_path), name="bank")
    got = Collect()
    try:
        assert src.poll_once(got) == 0  # first sighting: not yet known to be stable
        poll_until(src, got, lambda: len(got.envs) == 3)
        assert [e.payload for e in got.envs][1] == {"account": "00000001", "name": "客户1号", "amount": "1.01"}
        assert got.envs[0].type == "payment.v1" and got.envs[0].headers["line"] == "2"
        assert (ftpd.inbox / "archive" / "pay_0131.txt").exists() and not (ftpd.inbox / "pay_0131.txt").exists()
        assert (ftpd.inbox / "ignored.csv").exists()
        for _ in range(3):
            src.poll_once(got)
        assert len(got.envs) == 3, "a handled file is never emitted again"
        assert src.health().count == 3
    finally:
        src.stop()
        src.close()


def test_undecodable_or_oversized_files_go_to_error_dir_with_the_reason_and_good_files_still_flow(ftpd, tmp_path):
    bad = bank_file(3).split(b"\r\n")
    bad[2] = bad[2][:10] + b"\xff\x30" + bad[2][12:]
    (ftpd.inbox / "a_bad.txt").write_bytes(b"\r\n".join(bad))
    (ftpd.inbox / "b_good.txt").write_bytes(bank_file(2))
    (ftpd.inbox / "c_huge.txt").write_bytes(bank_file(200))
    src = FtpSource(cfg(ftpd, tmp_path, max_file_bytes=5000), name="bank")
    got = Collect()
    try:
        poll_until(src, got, lambda: (ftpd.inbox / "error" / "c_huge.txt").exists() and len(got.envs) == 2)
        assert "exceeds max_file_bytes" in (ftpd.inbox / "error" / "c_huge.txt.error.txt").read_text()
        reason = (ftpd.inbox / "error" / "a_bad.txt.error.txt").read_text()
        assert "line 3" in reason and "gb18030" in reason
        assert (ftpd.inbox / "error" / "a_bad.txt").read_bytes() == b"\r\n".join(bad), "the file is kept as it was"
        assert all(e.headers["file"] == "/in/b_good.txt" for e in got.envs)
        assert "moved to error/" in (src.health().last_error or "")
    finally:
        src.close()


def test_connection_cut_mid_transfer_is_retried_later_and_the_file_is_not_lost_or_archived(tmp_path):
    data = bank_file(6000)  # ~250 kB at 100 kB/s: the kill lands mid-transfer
    with Vsftpd(tmp_path, max_rate=100_000) as ftpd:
        (ftpd.inbox / "big.txt").write_bytes(data)
        src = FtpSource(cfg(ftpd, tmp_path, timeout=2), name="bank")
        got = Collect()
        errors: list[BaseException] = []
        src.poll_once(got)  # first sighting

        def second_poll() -> None:
            try:
                src.poll_once(got)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        t = threading.Thread(target=second_poll)
        t.start()
        wait_for(lambda: src.tracker.detail.get("transferred_bytes", 0) > 0, 10, what="transfer under way")
        ftpd.kill()
        t.join(15)
        assert not t.is_alive()
        assert errors and isinstance(errors[0], TransientError), errors
        assert got.calls == 0 and (ftpd.inbox / "big.txt").exists() and not (ftpd.inbox / "archive").exists()
        ftpd.max_rate = 0
        ftpd.restart()
        poll_until(src, got, lambda: len(got.envs) == 6000)
        assert got.envs[0].payload["account"] == "00000000" and got.envs[-1].payload["account"] == "00005999"
        assert (ftpd.inbox / "archive" / "big.txt").exists()
        src.close()


def test_peer_down_at_start_is_a_transient_error_within_the_timeout(tmp_path):
    c = parse_config(FtpSourceConfig, {
        "host": "127.0.0.1", "port": free_port(), "timeout": 1, "directory": "/in", "format": BANK_FORMAT,
        "envelope": {"type": "payment.v1", "source": "bank"}, "state_url": f"sqlite:///{tmp_path}/s.db"})
    src = FtpSource(c, name="down")
    with pytest.raises(TransientError, match="ftp connect"):
        src.poll_once(Collect())
    src.start(Collect())
    try:
        wait_for(lambda: src.health().last_error, 5, what="error in health")
        assert src.running and not src.health().ok
    finally:
        src.stop()


def test_emitted_but_not_yet_archived_file_is_moved_without_emitting_again(ftpd, tmp_path):
    (ftpd.inbox / "x.txt").write_bytes(bank_file(2))
    src = FtpSource(cfg(ftpd, tmp_path), name="bank")
    got = Collect()
    files = src.op("list", "list", "/in")
    f = next(x for x in files if x.name == "x.txt")
    StateStore(f"sqlite:///{tmp_path}/state.db").put(src.file_key(f), {"state": "emitted", "records": 2})
    poll_until(src, got, lambda: (ftpd.inbox / "archive" / "x.txt").exists())
    assert got.calls == 0
    src.close()


def test_done_marker_gates_files_and_batch_limit_bounds_a_poll(ftpd, tmp_path):
    for i in range(3):
        (ftpd.inbox / f"c{i}.csv").write_text("id,name\n1,a\n2,b\n")
        (ftpd.inbox / f"c{i}.csv.done").write_text("")
    (ftpd.inbox / "late.csv").write_text("id,name\n9,z\n")  # no marker yet
    src = FtpSource(cfg(ftpd, tmp_path, pattern="*.csv", stable="done_marker", max_files_per_poll=2,
                        format={"type": "csv"}, encoding="utf-8", per="file"), name="crm")
    got = Collect()
    try:
        src.poll_once(got)
        assert len(got.envs) == 2 and src.batch_full(0)  # two files, one envelope each; the loop polls again at once
        assert got.envs[0].payload == {"file": "/in/c0.csv", "records": [{"id": "1", "name": "a"}, {"id": "2", "name": "b"}]}
        src.poll_once(got)
        assert len(got.envs) == 3 and not (ftpd.inbox / "c2.csv.done").exists()
        assert (ftpd.inbox / "late.csv").exists()
    finally:
        src.close()


def test_sink_uploads_under_a_temp_name_renames_and_writes_a_checksum(ftpd, monkeypatch):
    monkeypatch.setenv("T_FTP_PW", "guest@example.net")
    sink = FtpSink(parse_config(FtpSinkConfig, {
        "host": "127.0.0.1", "port": ftpd.port, "password": "${env:T_FTP_PW}", "directory": "/in/out",
        "filename": "{payload[account]}.txt", "body": "text", "encoding": "gb18030", "checksum": True, "timeout": 3}))
    env = Envelope.create("bill.v1", {"account": "A1", "content": "账单 100.00\n"}, source="t")
    try:
        res = sink.send(env)
        sink.send(env)  # redelivery: same name, overwritten
    finally:
        sink.close()
    out = ftpd.inbox / "out"
    assert sorted(p.name for p in out.iterdir()) == ["A1.txt", "A1.txt.sha256"]
    import hashlib

    assert (out / "A1.txt").read_bytes() == "账单 100.00\n".encode("gb18030")
    assert (out / "A1.txt.sha256").read_text() == f"{hashlib.sha256((out / 'A1.txt').read_bytes()).hexdigest()}  A1.txt\n"
    assert res["file"] == "/in/out/A1.txt"


def test_slow_server_times_out_as_transient(ftpd, tmp_path):
    from .peers import TcpProxy

    proxy = TcpProxy(ftpd.port)
    proxy.delay = 2.0  # every chunk (the 220 greeting first) held longer than the timeout
    try:
        src = FtpSource(cfg(ftpd, tmp_path, port=proxy.port, timeout=0.5), name="slow")
        with pytest.raises(TransientError, match="ftp connect"):
            src.poll_once(Collect())
        src.close()
    finally:
        proxy.delay = 0
        proxy.close()


@pytest.mark.parametrize("name", ["ftp", "sftp"])
def test_checked_in_reference_doc_is_up_to_date(name):
    from esbhub.adapters.docs import render
    from esbhub.adapters.registry import get_adapter

    path = Path(__file__).resolve().parents[2] / "docs" / "adapters" / f"{name}.md"
    assert path.read_text(encoding="utf-8") == render(get_adapter(name)), "run: esbhub adapters docs"


def test_ftps_verifies_the_server_certificate_and_works_with_its_ca(tmp_path):
    from esbhub.errors import PermanentError

    from .peers_daemons import self_signed_cert

    cert, key = self_signed_cert(tmp_path, "rsa")
    with Vsftpd(tmp_path, tls=(cert, key)) as ftpd:
        (ftpd.inbox / "p.txt").write_bytes(bank_file(2))
        plain = FtpSource(cfg(ftpd, tmp_path), name="plain")
        with pytest.raises(PermanentError):  # the server insists on TLS
            plain.poll_once(Collect())
        plain.close()
        unverified = FtpSource(cfg(ftpd, tmp_path, tls=True), name="tls")
        with pytest.raises(PermanentError, match="CERTIFICATE_VERIFY_FAILED"):
            unverified.poll_once(Collect())
        unverified.close()
        src = FtpSource(cfg(ftpd, tmp_path, tls=True, ca_file=cert), name="tls")
        got = Collect()
        try:
            poll_until(src, got, lambda: len(got.envs) == 2)
        finally:
            src.close()
        assert (ftpd.inbox / "archive" / "p.txt").exists()
