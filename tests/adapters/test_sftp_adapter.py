"""SFTP poller and uploader against a real OpenSSH sshd started here (own host key, key login)."""

from __future__ import annotations

import subprocess

import pytest

from esbhub.adapters.base import parse_config
from esbhub.adapters.sftp import SftpSink, SftpSinkConfig, SftpSource, SftpSourceConfig
from esbhub.bus.envelope import Envelope
from esbhub.errors import ConfigError, PermanentError, TransientError

from .peers import free_port
from .peers_daemons import Sshd
from .test_ftp_adapter import BANK_FORMAT, Collect, bank_file, poll_until


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with Sshd(tmp_path_factory.mktemp("sftp")) as d:
        yield d


def conn(sshd: Sshd, **kw) -> dict:
    base = {"host": "127.0.0.1", "port": sshd.port, "username": "root", "private_key_file": str(sshd.client_key),
            "known_hosts": str(sshd.known_hosts), "timeout": 3}
    base.update(kw)
    return base


def test_gb18030_file_over_sftp_is_emitted_then_archived_with_host_key_checked(sshd, tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "pay.txt").write_bytes(bank_file(4))
    src = SftpSource(parse_config(SftpSourceConfig, conn(
        sshd, directory=str(inbox), pattern="*.txt", format=BANK_FORMAT, encoding="gb18030",
        envelope={"type": "payment.v1", "source": "bank"}, state_url=f"sqlite:///{tmp_path}/s.db")))
    got = Collect()
    try:
        poll_until(src, got, lambda: len(got.envs) == 4)
        assert got.envs[3].payload == {"account": "00000003", "name": "客户3号", "amount": "3.03"}
        assert (inbox / "archive" / "pay.txt").exists() and not (inbox / "pay.txt").exists()
        src.poll_once(got)
        assert len(got.envs) == 4
    finally:
        src.close()


def test_unknown_host_key_is_refused_by_default(sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    sink = SftpSink(parse_config(SftpSinkConfig, conn(sshd, known_hosts=str(kh), directory=str(tmp_path))))
    with pytest.raises(PermanentError, match="not in known_hosts"):
        sink.send(Envelope.create("bill.v1", {"a": 1}, source="t"))
    assert not list(tmp_path.glob("*.json"))


def test_changed_host_key_is_refused_even_with_accept_new(sshd, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True, timeout=20)
    kind, b64 = (tmp_path / "other.pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {kind} {b64}\n")
    sink = SftpSink(parse_config(SftpSinkConfig, conn(sshd, known_hosts=str(kh), host_key_policy="accept_new",
                                                      directory=str(tmp_path))))
    with pytest.raises(PermanentError, match="BadHostKey"):
        sink.send(Envelope.create("bill.v1", {"a": 1}, source="t"))


def test_accept_new_records_the_key_and_the_sink_writes_atomically_with_checksum(sshd, tmp_path):
    kh = tmp_path / "kh"
    out = tmp_path / "out"
    sink = SftpSink(parse_config(SftpSinkConfig, conn(sshd, known_hosts=str(kh), host_key_policy="accept_new",
                                                      directory=str(out), checksum=True)))
    env = Envelope.create("bill.v1", {"account": "A", "total": "10.00"}, source="t")
    try:
        res = sink.send(env)
    finally:
        sink.close()
    assert kh.read_text().split()[:2] == sshd.known_hosts_line.split()[:2]
    assert sorted(p.name for p in out.iterdir()) == [f"{env.id}.json", f"{env.id}.json.sha256"]
    assert (out / f"{env.id}.json").read_bytes() == b'{"account":"A","total":"10.00"}'
    assert res["sha256"] in (out / f"{env.id}.json.sha256").read_text()


def test_missing_known_hosts_file_is_a_config_error_and_peer_down_is_transient(sshd, tmp_path):
    sink = SftpSink(parse_config(SftpSinkConfig, conn(sshd, known_hosts=str(tmp_path / "nope"), directory="/tmp")))
    with pytest.raises(ConfigError, match="known_hosts"):
        sink.send(Envelope.create("bill.v1", {}, source="t"))
    down = SftpSink(parse_config(SftpSinkConfig, conn(sshd, port=free_port(), timeout=1, directory="/tmp")))
    with pytest.raises(TransientError):
        down.send(Envelope.create("bill.v1", {}, source="t"))


def test_config_needs_a_key_or_a_password_by_reference():
    from esbhub.errors import ConfigError as CE

    with pytest.raises(CE, match="private_key_file"):
        parse_config(SftpSinkConfig, {"host": "h", "username": "u", "directory": "/x"})
    with pytest.raises(CE, match="reference"):
        parse_config(SftpSinkConfig, {"host": "h", "username": "u", "directory": "/x", "password": "hunter2"})


def test_connection_cut_mid_transfer_is_retried_and_the_file_is_not_lost(sshd, tmp_path):
    import threading

    from waiting import wait_for

    from .peers import TcpProxy

    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "big.txt").write_bytes(bank_file(20000))
    proxy = TcpProxy(sshd.port)
    kh = tmp_path / "kh"
    kh.write_text(sshd.known_hosts_line.replace(f"]:{sshd.port} ", f"]:{proxy.port} "))
    src = SftpSource(parse_config(SftpSourceConfig, conn(
        sshd, port=proxy.port, known_hosts=str(kh), directory=str(inbox), pattern="*.txt", format=BANK_FORMAT,
        encoding="gb18030", envelope={"type": "payment.v1", "source": "bank"}, state_url=f"sqlite:///{tmp_path}/s.db")))
    got = Collect()
    errors: list[BaseException] = []
    src.poll_once(got)  # first sighting
    proxy.delay = 0.05  # slow the transfer down so the cut lands in the middle

    def poll() -> None:
        try:
            src.poll_once(got)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    t = threading.Thread(target=poll)
    t.start()
    try:
        wait_for(lambda: src.tracker.detail.get("transferred_bytes", 0) > 0, 15, what="transfer under way")
        proxy.cut()
        t.join(15)
        assert not t.is_alive() and errors and isinstance(errors[0], TransientError), errors
        assert got.calls == 0 and (inbox / "big.txt").exists() and not (inbox / "archive").exists()
        proxy.delay = 0
        poll_until(src, got, lambda: len(got.envs) == 20000)
        assert (inbox / "archive" / "big.txt").exists()
    finally:
        src.close()
        proxy.close()
