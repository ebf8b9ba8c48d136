"""The demo's in-process peers: the bank's SFTP server, billing's FTP server and billing's SOAP queries,
driven through the hub's own sftp / ftp / soap adapters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from esbhub.adapters.ftp import FtpConnection, FtpFS
from esbhub.adapters.sftp import SftpConnection, SftpFS
from esbhub.adapters.soap import SoapSink, SoapSinkConfig
from esbhub.bus.envelope import Envelope
from esbhub.errors import PermanentError
from esbhub.telecom import sims
from esbhub.telecom.peers import FtpPeer, SftpPeer
from esbhub.telecom.world import TelecomWorld, build


@pytest.fixture
def sftp(tmp_path: Path) -> Iterator[SftpPeer]:
    peer = SftpPeer(tmp_path / "root", tmp_path / "keys", username="bank", password="pw-1").start()
    yield peer
    peer.stop()


def test_sftp_peer_serves_its_directory_to_the_sftp_adapter_with_key_or_password(sftp: SftpPeer,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    sftp.drop("PAY_1.txt", "付款".encode("gb18030"), directory="outbox", marker=".done")
    monkeypatch.setenv("TEL_SFTP_PW", "pw-1")
    for auth in ({"private_key_file": str(sftp.client_key_file)}, {"password": "${env:TEL_SFTP_PW}"}):
        fs = SftpFS(SftpConnection(host="127.0.0.1", port=sftp.port, username="bank", known_hosts=str(sftp.known_hosts),
                                   **auth))  # type: ignore[arg-type]
        try:
            assert sorted(f.name for f in fs.list("/outbox")) == ["PAY_1.txt", "PAY_1.txt.done"]
            assert fs.read("/outbox/PAY_1.txt").decode("gb18030") == "付款"
        finally:
            fs.close()
    fs = SftpFS(SftpConnection(host="127.0.0.1", port=sftp.port, username="bank", known_hosts=str(sftp.known_hosts),
                               password="${env:TEL_SFTP_PW}"))  # type: ignore[arg-type]
    fs.mkdir("/outbox/archive")
    fs.rename("/outbox/PAY_1.txt", "/outbox/archive/PAY_1.txt")
    fs.close()
    assert (sftp.root / "outbox" / "archive" / "PAY_1.txt").exists() and not (sftp.root / "outbox" / "PAY_1.txt").exists()


def test_sftp_peer_host_key_is_checked_and_wrong_credentials_are_refused(sftp: SftpPeer, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    other = paramiko.ECDSAKey.generate(bits=256)
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sftp.port} {other.get_name()} {other.get_base64()}\n", encoding="utf-8")
    monkeypatch.setenv("TEL_SFTP_PW", "pw-1")
    with pytest.raises(paramiko.BadHostKeyException):
        SftpFS(SftpConnection(host="127.0.0.1", port=sftp.port, username="bank", known_hosts=str(wrong),
                              password="${env:TEL_SFTP_PW}"))  # type: ignore[arg-type]
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(PermanentError, match="not in known_hosts"):
        SftpFS(SftpConnection(host="127.0.0.1", port=sftp.port, username="bank", known_hosts=str(empty),
                              password="${env:TEL_SFTP_PW}"))  # type: ignore[arg-type]
    monkeypatch.setenv("TEL_SFTP_PW", "wrong")
    with pytest.raises(paramiko.AuthenticationException):
        SftpFS(SftpConnection(host="127.0.0.1", port=sftp.port, username="bank", known_hosts=str(sftp.known_hosts),
                              password="${env:TEL_SFTP_PW}"))  # type: ignore[arg-type]


def test_ftp_peer_serves_its_directory_to_the_ftp_adapter_and_refuses_a_wrong_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ftplib

    peer = FtpPeer(tmp_path / "ftp", username="billing", password="pw-2").start()
    try:
        peer.drop("BILL_1.txt", "账单".encode("gbk"), directory="outbox")
        monkeypatch.setenv("TEL_FTP_PW", "pw-2")
        fs = FtpFS(FtpConnection(host="127.0.0.1", port=peer.port, username="billing", password="${env:TEL_FTP_PW}"))  # type: ignore[arg-type]
        try:
            assert [f.name for f in fs.list("/outbox")] == ["BILL_1.txt"]
            assert fs.read("/outbox/BILL_1.txt").decode("gbk") == "账单"
        finally:
            fs.close()
        monkeypatch.setenv("TEL_FTP_PW", "wrong")
        with pytest.raises(ftplib.error_perm):
            FtpFS(FtpConnection(host="127.0.0.1", port=peer.port, username="billing", password="${env:TEL_FTP_PW}"))  # type: ignore[arg-type]
    finally:
        peer.stop()


@pytest.fixture(scope="module")
def billing() -> Iterator[tuple[TelecomWorld, sims.SimServer]]:
    w = build(20, 3)
    sim = sims.SimServer(w).start()
    yield w, sim
    sim.stop()


def _soap(sim: sims.SimServer, operation: str, params: dict[str, str]) -> dict[str, object] | None:
    sink = SoapSink(SoapSinkConfig(wsdl=f"{sim.url}/billing/soap?wsdl", operation=operation, request="payload", timeout=5))
    out = sink.send(Envelope.create("soap.lookup.v1", params, source="test"))
    return (out or {}).get("response")  # type: ignore[return-value]


def test_billing_soap_query_operations_answer_from_its_wsdl(billing: tuple[TelecomWorld, sims.SimServer]) -> None:
    w, sim = billing
    for p in w.billing[:3]:
        assert _soap(sim, "QueryCustomer", {"cust_id": p.source_id}) == sims.billing_record(p)
    group, shares = next(iter(w.groups.items()))
    got = _soap(sim, "QueryAccount", {"acct_no": group})
    assert got is not None and got["account"] == group
    assert {m["account"]: m["share"] for m in got["members"]} == {a: str(s) for a, s in shares.items()}  # type: ignore[index,union-attr]
    plain = w.billing[0].attributes.billing_account
    assert _soap(sim, "QueryAccount", {"acct_no": plain}) == {"account": plain, "cust_id": w.billing[0].source_id, "members": []}


def test_billing_soap_query_of_an_unknown_key_is_the_fault_client_not_found(
        billing: tuple[TelecomWorld, sims.SimServer]) -> None:
    _w, sim = billing
    for op, params in (("QueryCustomer", {"cust_id": "BIL-NOPE"}), ("QueryAccount", {"acct_no": "BA-NOPE"})):
        with pytest.raises(PermanentError) as ei:
            _soap(sim, op, params)
        assert getattr(ei.value.__cause__, "code", "").endswith("Client.NotFound")
