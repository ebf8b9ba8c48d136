"""In-process file-transfer peers of the telecom demo: the bank's SFTP server and billing's FTP server.

``make run`` needs no system daemon, so the demo (and its tests) run both peers in-process on
free loopback ports, each over a local directory:

* :class:`SftpPeer` — an SSH server with paramiko's server side (``paramiko.ServerInterface``
  + ``paramiko.SFTPServer`` with :class:`LocalSftpServer`, a ``SFTPServerInterface`` jailed in
  the directory). A host key is generated per run and written to a ``known_hosts`` file
  (``[127.0.0.1]:port …``) so the hub's sftp source checks it (host-key checking stays on);
  a client key pair is generated too and only that public key (or the password) is accepted.
* :class:`FtpPeer` — an FTP server with pyftpdlib (one user, password, home = the directory).

Both drop files the way their real counterparts do: :meth:`SftpPeer.drop` / :meth:`FtpPeer.drop`
write a temporary name, then rename (and write a ``.done`` marker when asked), so a poller never
reads half a file. What the hub has handled is visible under ``archive/`` of each directory.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

import paramiko

from esbhub.logging import get_logger

log = get_logger("esbhub.telecom")


def _drop(directory: Path, name: str, data: bytes, marker: str | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.part"
    tmp.write_bytes(data)
    path = directory / name
    tmp.replace(path)
    if marker:
        (directory / f"{name}{marker}").write_bytes(b"")
    return path


# ------------------------------------------------------------------ SFTP (paramiko server side)
class _Handle(paramiko.SFTPHandle):
    def stat(self) -> Any:
        try:
            return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))  # type: ignore[attr-defined]
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)


class LocalSftpServer(paramiko.SFTPServerInterface):
    """SFTP over one local directory: every client path is resolved inside ``root`` (no escape)."""

    def __init__(self, server: Any, *args: Any, root: str, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self.root = os.path.realpath(root)

    def _local(self, path: str) -> str:
        full = os.path.realpath(os.path.join(self.root, self.canonicalize(path).lstrip("/")))
        if full != self.root and not full.startswith(self.root + os.sep):
            raise PermissionError(path)
        return full

    def _guard(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno or 13)

    def list_folder(self, path: str) -> Any:
        def go() -> list[paramiko.SFTPAttributes]:
            d = self._local(path)
            out = []
            for name in sorted(os.listdir(d)):
                attr = paramiko.SFTPAttributes.from_stat(os.stat(os.path.join(d, name)))
                attr.filename = name
                out.append(attr)
            return out

        return self._guard(go)

    def stat(self, path: str) -> Any:
        return self._guard(lambda: paramiko.SFTPAttributes.from_stat(os.stat(self._local(path))))

    lstat = stat

    def open(self, path: str, flags: int, attr: Any) -> Any:
        def go() -> _Handle:
            local = self._local(path)
            fd = os.open(local, flags | getattr(os, "O_BINARY", 0), 0o640)
            if flags & os.O_WRONLY:
                mode = "ab" if flags & os.O_APPEND else "wb"
            elif flags & os.O_RDWR:
                mode = "a+b" if flags & os.O_APPEND else "r+b"
            else:
                mode = "rb"
            f = os.fdopen(fd, mode)
            h = _Handle(flags)
            h.filename = local  # type: ignore[attr-defined]
            h.readfile = f  # type: ignore[attr-defined]
            h.writefile = f  # type: ignore[attr-defined]
            return h

        return self._guard(go)

    def remove(self, path: str) -> int:
        return self._guard(lambda: (os.remove(self._local(path)), paramiko.SFTP_OK)[1])

    def rename(self, oldpath: str, newpath: str) -> int:
        def go() -> int:
            new = self._local(newpath)
            if os.path.exists(new):
                return paramiko.SFTP_FAILURE
            os.rename(self._local(oldpath), new)
            return paramiko.SFTP_OK

        return self._guard(go)

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        return self._guard(lambda: (os.replace(self._local(oldpath), self._local(newpath)), paramiko.SFTP_OK)[1])

    def mkdir(self, path: str, attr: Any) -> int:
        return self._guard(lambda: (os.mkdir(self._local(path)), paramiko.SFTP_OK)[1])

    def rmdir(self, path: str) -> int:
        return self._guard(lambda: (os.rmdir(self._local(path)), paramiko.SFTP_OK)[1])


class _SshAuth(paramiko.ServerInterface):
    def __init__(self, username: str, password: str | None, client_key: paramiko.PKey | None) -> None:
        self.username, self.password, self.client_key = username, password, client_key

    def get_allowed_auths(self, username: str) -> str:
        kinds = (["publickey"] if self.client_key else []) + (["password"] if self.password else [])
        return ",".join(kinds)

    def check_auth_password(self, username: str, password: str) -> int:
        ok = bool(self.password) and username == self.username and password == self.password
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = self.client_key is not None and username == self.username and key == self.client_key
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class SftpPeer:
    """An SFTP server over ``root`` on a free loopback port (host key and client key generated)."""

    def __init__(self, root: Path, keys_dir: Path, *, username: str = "bank", password: str | None = None,
                 host: str = "127.0.0.1") -> None:
        self.root, self.keys_dir, self.username, self.password, self.host = Path(root), Path(keys_dir), username, password, host
        self.root.mkdir(parents=True, exist_ok=True)
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        self.host_key = paramiko.ECDSAKey.generate(bits=256)
        client = paramiko.ECDSAKey.generate(bits=256)
        self.client_key_file = self.keys_dir / "client_id_ecdsa"
        client.write_private_key_file(str(self.client_key_file))
        self.client_key = paramiko.ECDSAKey(data=client.asbytes())  # the public half the server accepts
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.5)
        self.port = int(self.sock.getsockname()[1])
        self.known_hosts = self.keys_dir / "known_hosts"
        self.known_hosts.write_text(f"[{host}]:{self.port} {self.host_key.get_name()} {self.host_key.get_base64()}\n",
                                    encoding="utf-8")
        self._stop = threading.Event()
        self._transports: list[paramiko.Transport] = []
        self._thread: threading.Thread | None = None

    def start(self) -> SftpPeer:
        self._thread = threading.Thread(target=self._accept, name="telecom-sftp-peer", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                t = paramiko.Transport(conn)
                t.add_server_key(self.host_key)
                t.set_subsystem_handler("sftp", paramiko.SFTPServer, LocalSftpServer, root=str(self.root))
                t.start_server(server=_SshAuth(self.username, self.password, self.client_key))
                self._transports = [x for x in self._transports if x.is_active()] + [t]
            except (paramiko.SSHException, OSError, EOFError) as exc:
                log.warning("sftp_peer_session_failed", error=str(exc)[:200])
                conn.close()

    def drop(self, name: str, data: bytes, *, directory: str = "", marker: str | None = None) -> Path:
        """Put a file on the server as the bank does (temporary name, rename, optional done marker)."""
        return _drop(self.root / directory, name, data, marker)

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        for t in self._transports:
            t.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


# ------------------------------------------------------------------ FTP (pyftpdlib)
class FtpPeer:
    """An FTP server over ``root`` on a free loopback port (one user with a password)."""

    def __init__(self, root: Path, *, username: str = "billing", password: str, host: str = "127.0.0.1") -> None:
        import warnings

        with warnings.catch_warnings():  # pyftpdlib is built on asyncore/asynchat (deprecated, present in 3.11)
            warnings.simplefilter("ignore", DeprecationWarning)
            from pyftpdlib.authorizers import DummyAuthorizer
            from pyftpdlib.handlers import FTPHandler
            from pyftpdlib.servers import ThreadedFTPServer

        ftp_log = logging.getLogger("pyftpdlib")  # not one INFO line per command (and no handler of its own:
        ftp_log.setLevel(logging.WARNING)         # a logger with a handler keeps pyftpdlib from configuring one)
        if not any(isinstance(h, logging.NullHandler) for h in ftp_log.handlers):
            ftp_log.addHandler(logging.NullHandler())
        self.root, self.username, self.host = Path(root), username, host
        self.root.mkdir(parents=True, exist_ok=True)
        auth = DummyAuthorizer()
        auth.add_user(username, password, str(self.root), perm="elradfmwMT")
        handler = type("TelecomFtpHandler", (FTPHandler,), {"authorizer": auth, "banner": "billing ftp",
                                                             "timeout": 60, "passive_ports": None,
                                                             "auth_failed_timeout": 0.5})
        self.server = ThreadedFTPServer((host, 0), handler)
        self.port = int(self.server.address[1])
        self._thread: threading.Thread | None = None

    def start(self) -> FtpPeer:
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"timeout": 0.5, "blocking": True},
                                        name="telecom-ftp-peer", daemon=True)
        self._thread.start()
        return self

    def drop(self, name: str, data: bytes, *, directory: str = "", marker: str | None = None) -> Path:
        """Put a file on the server as billing does (temporary name, rename, optional done marker)."""
        return _drop(self.root / directory, name, data, marker)

    def stop(self) -> None:
        self.server.close_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
