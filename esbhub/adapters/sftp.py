"""SFTP (paramiko): the same file poller and uploader as :mod:`esbhub.adapters.ftp`, over SSH.

Host-key checking is ON: the server's key must be in ``known_hosts`` (a file path; entries for
non-standard ports are written ``[host]:port``). An unknown key is refused (PermanentError,
naming the host and the key fingerprint) unless ``host_key_policy: accept_new`` — then the key
is added to the file with a warning (trust on first use); a *changed* key is always refused.
Authentication: a private key file (passphrase by reference) and/or a password by reference;
the SSH agent and ~/.ssh keys are never consulted implicitly.
"""

from __future__ import annotations

import io
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import paramiko
from pydantic import Field, model_validator

from esbhub.adapters.base import AdapterConfig, AdapterSpec
from esbhub.adapters.ftp import FilePollFields, FileSink, FileSinkFields, FileSource, RemoteFile, RemoteFS
from esbhub.errors import ConfigError, EsbhubError, PermanentError, TransientError
from esbhub.logging import get_logger
from esbhub.secrets import SecretRef, resolve

_log = get_logger("esbhub.adapters", adapter="sftp")


class SftpConnection(AdapterConfig):
    """Where the SSH server is, how its host key is checked and how to log in."""

    host: str = Field(description="Server host name or address.")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port.")
    username: str = Field(description="Login name.")
    password: SecretRef | None = Field(default=None, description="Password, by reference.")
    private_key_file: str | None = Field(default=None, description="Path of the private key (OpenSSH/PEM format).")
    private_key_passphrase: SecretRef | None = Field(
        default=None, description="Passphrase of an encrypted private key, by reference."
    )
    known_hosts: str = Field(
        default="~/.ssh/known_hosts", description="known_hosts file the server's host key is checked against."
    )
    host_key_policy: Literal["reject", "accept_new"] = Field(
        default="reject",
        description="Unknown host key: refuse ('reject', default) or add it to known_hosts with a warning "
        "('accept_new', trust on first use). A changed key is always refused.",
    )

    @model_validator(mode="after")
    def _auth(self) -> SftpConnection:
        if not self.password and not self.private_key_file:
            raise ValueError("sftp needs 'private_key_file' or 'password' (by reference)")
        return self


class SftpSourceConfig(SftpConnection, FilePollFields):
    """Polls an SFTP directory and turns files into envelopes (see esbhub.adapters.ftp)."""


class SftpSinkConfig(SftpConnection, FileSinkFields):
    """Uploads one file per envelope over SFTP (temp name, then atomic rename)."""


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        _log.warning(
            "sftp_host_key_accepted", host=hostname, key_type=key.get_name(), fingerprint=key.fingerprint,
            known_hosts=str(self.path),
        )
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class _Reject(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise PermanentError(
            f"sftp: host key of {hostname} ({key.get_name()} {key.fingerprint}) is not in known_hosts; add it "
            "(ssh-keyscan) or set host_key_policy: accept_new"
        )


class SftpFS(RemoteFS):
    def __init__(self, cfg: SftpConnection) -> None:
        kh = Path(cfg.known_hosts).expanduser()
        client = paramiko.SSHClient()
        if kh.exists():
            client.load_host_keys(str(kh))
        elif cfg.host_key_policy == "reject":
            raise ConfigError(f"sftp: known_hosts file '{kh}' does not exist (host-key checking is on)")
        client.set_missing_host_key_policy(_AcceptNew(kh) if cfg.host_key_policy == "accept_new" else _Reject())
        pkey = None
        if cfg.private_key_file:
            pw = (
                resolve(cfg.private_key_passphrase, loc="private_key_passphrase").get_secret_value()
                if cfg.private_key_passphrase
                else None
            )
            try:
                pkey = paramiko.PKey.from_path(Path(cfg.private_key_file).expanduser(), pw)
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise ConfigError(f"sftp: private key '{cfg.private_key_file}' cannot be loaded: {exc}") from None
        password = resolve(cfg.password, loc="password").get_secret_value() if cfg.password else None
        try:
            client.connect(
                cfg.host,
                port=cfg.port,
                username=cfg.username,
                password=password,
                pkey=pkey,
                timeout=cfg.timeout,
                banner_timeout=cfg.timeout,
                auth_timeout=cfg.timeout,
                channel_timeout=cfg.timeout,
                allow_agent=False,
                look_for_keys=False,
            )
            self.sftp = client.open_sftp()
            self.sftp.get_channel().settimeout(cfg.timeout)
        except BaseException:
            client.close()
            raise
        self.client = client

    def list(self, directory: str) -> list[RemoteFile]:
        return [
            RemoteFile(a.filename, int(a.st_size or 0), float(a.st_mtime or 0))
            for a in self.sftp.listdir_attr(directory)
            if a.st_mode is not None and stat.S_ISREG(a.st_mode)
        ]

    def read(self, path: str, progress: Callable[[int], None] | None = None) -> bytes:
        buf = io.BytesIO()
        self.sftp.getfo(path, buf, callback=(lambda done, total: progress(done)) if progress else None)
        return buf.getvalue()

    def write(self, path: str, data: bytes) -> None:
        self.sftp.putfo(io.BytesIO(data), path, file_size=len(data), confirm=True)

    def rename(self, src: str, dst: str) -> None:
        self.sftp.posix_rename(src, dst)

    def remove(self, path: str) -> None:
        self.sftp.remove(path)

    def mkdir(self, path: str) -> None:
        try:
            self.sftp.stat(path)
        except FileNotFoundError:
            self.sftp.mkdir(path)

    def close(self) -> None:
        try:
            self.sftp.close()
        finally:
            self.client.close()


_SFTP_ERRORS: dict[type[BaseException], type[EsbhubError]] = {
    paramiko.BadHostKeyException: PermanentError,
    paramiko.AuthenticationException: PermanentError,
    FileNotFoundError: PermanentError,
    PermissionError: PermanentError,
    paramiko.SSHException: TransientError,
    paramiko.ssh_exception.NoValidConnectionsError: TransientError,
}


class SftpSource(FileSource):
    adapter_name = "sftp"
    error_map = _SFTP_ERRORS

    def open_fs(self) -> RemoteFS:
        return SftpFS(self.config)


class SftpSink(FileSink):
    adapter_name = "sftp"
    error_map = _SFTP_ERRORS

    def open_fs(self) -> RemoteFS:
        return SftpFS(self.config)


SPEC = AdapterSpec(
    name="sftp",
    config_model=SftpSourceConfig,
    source_config_model=SftpSourceConfig,
    sink_config_model=SftpSinkConfig,
    source_cls=SftpSource,
    sink_cls=SftpSink,
    description="SFTP (paramiko): the FTP file poller and uploader over SSH — host-key checking on by default "
    "(known_hosts by path; unknown keys refused unless host_key_policy: accept_new), key or password auth by "
    "reference, atomic rename of uploads.",
)
