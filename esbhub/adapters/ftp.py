"""FTP (ftplib) file poller and uploader; the shared file machinery the SFTP adapter reuses.

Source — poll a directory:
  1. list it, keep names matching ``pattern`` (never temp names, markers or sub-directories);
  2. a file is *ready* when its size and mtime are unchanged across two polls
     (``stable: size_mtime``) or when ``<name><done_suffix>`` exists (``stable: done_marker``);
  3. at most ``max_files_per_poll`` ready files per poll; each one is read whole, parsed
     (:mod:`esbhub.adapters.fileformats`: CSV, fixed-width, XML; UTF-8 / GBK / GB18030)
     into one envelope per record (or per file), and handed to ``emit`` in chunks;
  4. ONLY after emit returned is the file recorded as ``emitted`` in the adapter state store
     (key: path + size + mtime) and then moved to ``archive/`` and recorded ``done``.
     A crash before the move re-reads nothing: the next poll sees ``emitted`` and just moves
     it. A crash before the state write re-emits the same envelope ids (stable ids from
     path + size + mtime + line), which the bus deduplicates.
  5. a file that cannot be decoded or parsed goes to ``error/`` with ``<name>.error.txt``
     beside it naming the line — never lost, never half-emitted (the whole file is parsed
     before anything is emitted).
  Connection loss, timeouts, 4xx replies → TransientError: the file stays where it is and
  the next poll (after backoff) tries again.

Sink — one file per envelope: upload to a temporary name (``.<name>.part``), then rename to
the final name (readers never see half a file); optionally a ``<name>.sha256`` checksum
file, written the same way after the data file. File names come from the envelope id by
default, so a redelivered envelope overwrites its own file (idempotent).
"""

from __future__ import annotations

import abc
import fnmatch
import ftplib
import hashlib
import io
import posixpath
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import Field

from esbhub.adapters.base import (
    AdapterConfig,
    AdapterSpec,
    Emit,
    EnvelopeTemplate,
    PollingSource,
    Sink,
    check_url_secret,
    map_error,
    resolve_url,
    stable_id,
)
from esbhub.adapters.fileformats import Encoding, FileFormat, FileFormatError, parse_records
from esbhub.bus.envelope import Envelope
from esbhub.errors import EsbhubError, InvalidMessage, PermanentError, TransientError
from esbhub.secrets import SecretRef, resolve

# ---------------------------------------------------------------------------------------------
# shared config


class FilePollFields(AdapterConfig):
    """What is polled and how files become envelopes (shared by ftp and sftp)."""

    directory: str = Field(description="Remote directory polled, e.g. '/in/bank'.")
    pattern: str = Field(default="*", description="Glob the file names must match, e.g. '*.txt'.")
    stable: Literal["size_mtime", "done_marker"] = Field(
        default="size_mtime",
        description="When a file is complete: size and mtime unchanged across two polls, or a done-marker file exists.",
    )
    done_suffix: str = Field(default=".done", min_length=1, description="done_marker: suffix of the marker file.")
    max_files_per_poll: int = Field(default=10, ge=1, le=10_000, description="Batch limit: files handled per poll.")
    archive_dir: str = Field(default="archive", description="Where handled files go (relative to 'directory' or absolute).")
    error_dir: str = Field(default="error", description="Where unreadable files go, with a '<name>.error.txt' reason.")
    format: FileFormat = Field(description="How a file is parsed into records (csv / fixed / xml).")
    encoding: Encoding = Field(default="utf-8", description="Text encoding of the files.")
    per: Literal["record", "file"] = Field(
        default="record", description="One envelope per record, or one per file (payload {file, records})."
    )
    emit_batch: int = Field(default=1000, ge=1, le=100_000, description="Envelopes handed to emit at once.")
    max_file_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1,
        description="Larger files are not read (a file is parsed whole before emitting): moved to error/ with the reason.",
    )
    envelope: EnvelopeTemplate = Field(description="Type and source system of the envelopes made.")
    poll_interval: float = Field(default=5.0, gt=0, le=86400, description="Seconds between polls when idle.")
    state_url: str | None = Field(
        default=None, description="Database holding which files were handled (default: the hub database)."
    )
    state_key: str | None = Field(default=None, description="Prefix of the state keys (default: adapter, host, port).")


class FileSinkFields(AdapterConfig):
    """Where and how envelopes are written as files (shared by ftp and sftp)."""

    directory: str = Field(description="Remote directory files are written to.")
    filename: str = Field(
        default="{id}.json",
        description="File name template: {id}, {type}, {source}, {date} (UTC yyyymmdd), {ext}; or a payload "
        "field as {payload[name]}.",
    )
    body: Literal["json", "text"] = Field(
        default="json",
        description="'json': the payload as JSON; 'text': the payload is a string (or has a 'content' string) "
        "written in 'encoding'.",
    )
    encoding: Encoding = Field(default="utf-8", description="Encoding of 'text' bodies.")
    checksum: bool = Field(default=False, description="Also write '<name>.sha256' ('<hex>  <name>').")
    temp_prefix: str = Field(default=".", description="Prefix of the temporary upload name.")
    temp_suffix: str = Field(default=".part", min_length=1, description="Suffix of the temporary upload name.")
    mkdir: bool = Field(default=True, description="Create the directory if it is missing.")


# ---------------------------------------------------------------------------------------------
# remote file systems


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    mtime: float


class RemoteFS(abc.ABC):
    """One open connection to a file server; every call bounded by the adapter timeout."""

    @abc.abstractmethod
    def list(self, directory: str) -> list[RemoteFile]: ...

    @abc.abstractmethod
    def read(self, path: str, progress: Callable[[int], None] | None = None) -> bytes: ...

    @abc.abstractmethod
    def write(self, path: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Rename, replacing ``dst`` if it exists."""

    @abc.abstractmethod
    def remove(self, path: str) -> None: ...

    @abc.abstractmethod
    def mkdir(self, path: str) -> None:
        """Create ``path`` if it does not exist."""

    @abc.abstractmethod
    def close(self) -> None: ...


_FTP_ERRORS: dict[type[BaseException], type[EsbhubError]] = {
    ssl.SSLCertVerificationError: PermanentError,  # a configuration problem: retrying will not help
    ftplib.error_temp: TransientError,
    ftplib.error_reply: TransientError,
    ftplib.error_proto: TransientError,
    ftplib.error_perm: PermanentError,
}


def _mdtm(text: str) -> float:
    stamp = text.split()[-1][:14]
    return datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC).timestamp()


class FtpFS(RemoteFS):
    def __init__(self, cfg: FtpConnection) -> None:
        if cfg.tls:
            ctx = ssl.create_default_context(cafile=cfg.ca_file)
            if not cfg.verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            # ftplib's own default context verifies nothing: always pass one
            ftp: ftplib.FTP = ftplib.FTP_TLS(  # noqa: S321 - FTP is what the peer speaks; FTPS when configured
                timeout=cfg.timeout, encoding=cfg.control_encoding, context=ctx
            )
        else:
            ftp = ftplib.FTP(timeout=cfg.timeout, encoding=cfg.control_encoding)  # noqa: S321 - the peer speaks FTP
        try:
            ftp.connect(cfg.host, cfg.port, timeout=cfg.timeout)
            pw = resolve(cfg.password, loc="password").get_secret_value() if cfg.password else ""
            ftp.login(cfg.username, pw)
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.prot_p()
            ftp.set_pasv(cfg.passive)
            ftp.voidcmd("TYPE I")
        except BaseException:
            try:
                ftp.close()
            finally:
                pass
            raise
        self.ftp = ftp
        self._mlsd: bool | None = None

    def list(self, directory: str) -> list[RemoteFile]:
        if self._mlsd is not False:
            try:
                out = []
                for name, facts in self.ftp.mlsd(directory, facts=["type", "size", "modify"]):
                    if facts.get("type") == "file":
                        out.append(RemoteFile(name, int(facts.get("size", 0)), _mdtm(facts.get("modify", "0" * 14))))
                self._mlsd = True
                return out
            except ftplib.error_perm as exc:
                if not str(exc).startswith(("500", "501", "502", "504")):
                    raise
                self._mlsd = False
        out = []
        for entry in self.ftp.nlst(directory):
            name = posixpath.basename(entry.rstrip("/"))
            path = posixpath.join(directory, name)
            try:
                size = self.ftp.size(path)
                mtime = _mdtm(self.ftp.sendcmd(f"MDTM {path}"))
            except ftplib.error_perm:  # a directory, or gone since the listing
                continue
            if size is not None:
                out.append(RemoteFile(name, int(size), mtime))
        return out

    def read(self, path: str, progress: Callable[[int], None] | None = None) -> bytes:
        buf = io.BytesIO()

        def got(chunk: bytes) -> None:
            buf.write(chunk)
            if progress:
                progress(buf.tell())

        self.ftp.retrbinary(f"RETR {path}", got, blocksize=65536)
        return buf.getvalue()

    def write(self, path: str, data: bytes) -> None:
        self.ftp.storbinary(f"STOR {path}", io.BytesIO(data), blocksize=65536)

    def rename(self, src: str, dst: str) -> None:
        self.ftp.rename(src, dst)

    def remove(self, path: str) -> None:
        self.ftp.delete(path)

    def mkdir(self, path: str) -> None:
        try:
            self.ftp.mkd(path)
        except ftplib.error_perm as exc:
            if not str(exc).startswith("550"):
                raise

    def close(self) -> None:
        try:
            self.ftp.quit()
        except (OSError, EOFError, ftplib.Error):
            self.ftp.close()


# ---------------------------------------------------------------------------------------------
# generic source and sink over a RemoteFS


class _Connected:
    """A lazily opened RemoteFS that is dropped on any transport error (reconnect next call)."""

    adapter_name: str
    config: Any
    tracker: Any
    error_map: dict[type[BaseException], type[EsbhubError]] = {}

    def _init_conn(self) -> None:
        self._fs: RemoteFS | None = None
        self._fs_lock = threading.RLock()

    @abc.abstractmethod
    def open_fs(self) -> RemoteFS: ...

    def fs(self) -> RemoteFS:
        if self._fs is None:
            self._fs = self._call("connect", self.open_fs)
        return self._fs

    def _call(self, operation: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except EsbhubError:
            raise
        except Exception as exc:
            err = map_error(exc, adapter=self.adapter_name, operation=operation, extra=self.error_map)
            if isinstance(err, TransientError) or isinstance(exc, OSError | EOFError):
                self.drop()
            raise err from exc

    def op(self, operation: str, name: str, *args: Any) -> Any:
        fs = self.fs()
        return self._call(operation, getattr(fs, name), *args)

    def drop(self) -> None:
        fs, self._fs = self._fs, None
        if fs is not None:
            try:
                fs.close()
            except Exception:  # noqa: BLE001, S110 - closing a broken connection: nothing to do
                pass

    @property
    def peer(self) -> str:
        return f"{self.config.host}:{self.config.port}"


def _join(directory: str, name: str) -> str:
    return name if name.startswith("/") else posixpath.join(directory, name)


class FileSource(_Connected, PollingSource[Any]):
    """Polls a remote directory; see the module docstring for the exactly-once steps."""

    def __init__(self, config: Any, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._init_conn()
        self._seen: dict[str, tuple[int, float]] = {}
        self._state: Any = None
        c = config
        self.state_prefix = c.state_key or f"{self.adapter_name}:{c.host}:{c.port}"
        self._handled = 0

    # -- state ---------------------------------------------------------------------------------
    def state_store(self) -> Any:
        if self._state is None:
            from esbhub.adapters.store import StateStore

            url = self.config.state_url
            if url is None:
                from esbhub.config import Settings

                url = Settings().effective_database_url
            self._state = StateStore(resolve_url(check_url_secret(url)))
        return self._state

    def file_key(self, f: RemoteFile) -> str:
        key = f"{self.state_prefix}:{_join(self.config.directory, f.name)}:{f.size}:{int(f.mtime)}"
        if len(key) > 240:
            key = key[:170] + ":" + hashlib.sha256(key.encode()).hexdigest()[:64]
        return key

    # -- polling -------------------------------------------------------------------------------
    def batch_full(self, n: int) -> bool:
        return self._handled >= self.config.max_files_per_poll

    def ready_files(self, files: list[RemoteFile]) -> list[RemoteFile]:
        c = self.config
        names = {f.name for f in files}
        cands = [
            f
            for f in files
            if fnmatch.fnmatchcase(f.name, c.pattern)
            and not f.name.endswith((c.done_suffix, ".error.txt", ".sha256"))
            and not (f.name.startswith(".") and f.name.endswith(".part"))
        ]
        if c.stable == "done_marker":
            return sorted((f for f in cands if f.name + c.done_suffix in names), key=lambda f: (f.mtime, f.name))
        now = {f.name: (f.size, f.mtime) for f in cands}
        ready = [f for f in cands if self._seen.get(f.name) == now[f.name]]
        self._seen = now
        return sorted(ready, key=lambda f: (f.mtime, f.name))

    def poll_once(self, emit: Emit) -> int:
        c = self.config
        self._handled = 0
        with self._fs_lock:
            files = self.op("list", "list", c.directory)
            ready = self.ready_files(files)
            store = self.state_store()
            n = 0
            for f in ready:
                if self._handled >= c.max_files_per_poll or self._stop.is_set():
                    break
                key = self.file_key(f)
                st = store.get(key) or {}
                state = st.get("state")
                if state in ("done", "error"):
                    continue  # already moved; a listing raced with the move
                if state == "emitted":  # emitted before a crash / failed move: just move it now
                    self._finish(f, key, st)
                    self._handled += 1
                    continue
                n += self._process(f, key, emit)
                self._handled += 1
            self.tracker.detail.update(peer=self.peer, directory=c.directory, files_waiting=len(ready) - self._handled)
            return n

    def _process(self, f: RemoteFile, key: str, emit: Emit) -> int:
        c = self.config
        path = _join(c.directory, f.name)
        if f.size > c.max_file_bytes:
            self._to_error(f, key, f"file of {f.size} bytes exceeds max_file_bytes ({c.max_file_bytes})")
            return 0
        t0 = time.perf_counter()
        self.tracker.detail["transferring"] = path

        def progress(nbytes: int) -> None:
            self.tracker.detail["transferred_bytes"] = nbytes

        try:
            data = self.op("read", "read", path, progress)
        finally:
            self.tracker.detail.pop("transferring", None)
        try:
            envs = self.envelopes(f, key, data)
        except (FileFormatError, InvalidMessage) as exc:
            self._to_error(f, key, str(exc))
            return 0
        for i in range(0, len(envs), c.emit_batch):
            emit(envs[i:i + c.emit_batch])  # raises → nothing recorded, file stays, re-read later
        st = {"state": "emitted", "records": len(envs), "at": datetime.now(UTC).isoformat()}
        self.state_store().put(key, st)
        self.log.info("file_emitted", file=path, records=len(envs), bytes=len(data))
        self._finish(f, key, st)
        self.tracker.record_success(time.perf_counter() - t0, len(envs))
        return len(envs)

    def envelopes(self, f: RemoteFile, key: str, data: bytes) -> list[Envelope]:
        c = self.config
        at = datetime.fromtimestamp(f.mtime, UTC)
        path = _join(c.directory, f.name)
        recs = list(parse_records(data, c.format, c.encoding))
        if c.per == "file":
            payload = {"file": path, "records": [r for _, r in recs]}
            return [c.envelope.make(payload, id=stable_id(key, at), headers={"file": path})]
        return [
            c.envelope.make(rec, id=stable_id(f"{key}:{line}", at), headers={"file": path, "line": str(line)})
            for line, rec in recs
        ]

    def _finish(self, f: RemoteFile, key: str, st: dict[str, Any]) -> None:
        c = self.config
        archive = _join(c.directory, c.archive_dir)
        self.op("mkdir", "mkdir", archive)
        try:
            self.op("archive", "rename", _join(c.directory, f.name), posixpath.join(archive, f.name))
        except PermanentError:  # e.g. a server that will not replace an archived file of the same name
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            self.op("archive", "rename", _join(c.directory, f.name), posixpath.join(archive, f"{f.name}.{stamp}"))
        if c.stable == "done_marker":
            try:
                self.op("archive", "remove", _join(c.directory, f.name + c.done_suffix))
            except PermanentError:
                pass
        self.state_store().put(key, {**st, "state": "done"})

    def _to_error(self, f: RemoteFile, key: str, reason: str) -> None:
        c = self.config
        path = _join(c.directory, f.name)
        err_dir = _join(c.directory, c.error_dir)
        self.op("mkdir", "mkdir", err_dir)
        text = f"{path}: {reason}\n(size {f.size} bytes, mtime {datetime.fromtimestamp(f.mtime, UTC).isoformat()})\n"
        self.op("error", "write", posixpath.join(err_dir, f.name + ".error.txt"), text.encode("utf-8"))
        self.op("error", "rename", path, posixpath.join(err_dir, f.name))
        if c.stable == "done_marker":
            try:
                self.op("error", "remove", _join(c.directory, f.name + c.done_suffix))
            except PermanentError:
                pass
        self.state_store().put(key, {"state": "error", "reason": reason[:500], "at": datetime.now(UTC).isoformat()})
        self.tracker.record_error(f"file {path} moved to {c.error_dir}/: {reason[:300]}")
        self.log.warning("file_rejected", file=path, reason=reason[:300], moved_to=err_dir)

    def close(self) -> None:
        with self._fs_lock:
            self.drop()

    def health(self) -> Any:
        h = super().health()
        h.detail.setdefault("peer", self.peer)
        return h


class FileSink(_Connected, Sink[Any]):
    """Writes one file per envelope: temp name, rename, optional .sha256."""

    def __init__(self, config: Any, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._init_conn()
        self._made_dir = False

    def render_name(self, env: Envelope) -> str:
        c = self.config
        try:
            name = c.filename.format(
                id=env.id,
                type=env.type,
                source=env.source,
                date=datetime.now(UTC).strftime("%Y%m%d"),
                ext="json" if c.body == "json" else "txt",
                payload=env.payload if isinstance(env.payload, dict) else {},
            )
        except (KeyError, IndexError, AttributeError, ValueError) as exc:
            raise InvalidMessage(f"{self.adapter_name}: file name template: missing {exc}") from None
        if not name or "/" in name or name in (".", ".."):
            raise InvalidMessage(f"{self.adapter_name}: file name {name!r} is not a plain file name")
        return name

    def render_body(self, env: Envelope) -> bytes:
        c = self.config
        if c.body == "json":
            return orjson.dumps(env.payload)
        text = env.payload.get("content") if isinstance(env.payload, dict) else env.payload
        if not isinstance(text, str):
            raise InvalidMessage(f"{self.adapter_name}: body 'text' needs a string payload or a 'content' string")
        try:
            return text.encode(c.encoding)
        except UnicodeEncodeError as exc:
            raise InvalidMessage(f"{self.adapter_name}: payload not encodable as {c.encoding}: {exc.reason}") from None

    def _put(self, directory: str, name: str, data: bytes) -> None:
        c = self.config
        tmp = posixpath.join(directory, f"{c.temp_prefix}{name}{c.temp_suffix}")
        self.op("upload", "write", tmp, data)
        self.op("rename", "rename", tmp, posixpath.join(directory, name))

    def deliver(self, envelope: Envelope) -> dict[str, Any] | None:
        c = self.config
        name = self.render_name(envelope)
        data = self.render_body(envelope)
        with self._fs_lock:
            if c.mkdir and not self._made_dir:
                self.op("mkdir", "mkdir", c.directory)
                self._made_dir = True
            self._put(c.directory, name, data)
            digest = hashlib.sha256(data).hexdigest()
            if c.checksum:
                self._put(c.directory, name + ".sha256", f"{digest}  {name}\n".encode())
        return {"file": posixpath.join(c.directory, name), "bytes": len(data), "sha256": digest}

    def deliver_many(self, envelopes: Sequence[Envelope]) -> list[dict[str, Any] | None]:
        return [self.deliver(e) for e in envelopes]

    def close(self) -> None:
        with self._fs_lock:
            self.drop()

    def health(self) -> Any:
        h = super().health()
        h.detail["peer"] = self.peer
        return h


# ---------------------------------------------------------------------------------------------
# FTP


class FtpConnection(AdapterConfig):
    """Where the FTP server is and how to log in."""

    host: str = Field(description="Server host name or address.")
    port: int = Field(default=21, ge=1, le=65535, description="Control connection port.")
    username: str = Field(default="anonymous", description="Login name.")
    password: SecretRef | None = Field(default=None, description="Password, by reference (empty when null).")
    passive: bool = Field(default=True, description="Passive mode data connections (PASV).")
    tls: bool = Field(default=False, description="Explicit FTPS (AUTH TLS, protected data channel).")
    verify_tls: bool = Field(default=True, description="FTPS: verify the server certificate and host name.")
    ca_file: str | None = Field(default=None, description="FTPS: CA bundle (PEM) to verify the server with.")
    control_encoding: str = Field(default="utf-8", description="Encoding of file names on the control connection.")


class FtpSourceConfig(FtpConnection, FilePollFields):
    """Polls an FTP directory and turns files into envelopes (see the module docstring)."""


class FtpSinkConfig(FtpConnection, FileSinkFields):
    """Uploads one file per envelope over FTP (temp name, then rename)."""


class FtpSource(FileSource):
    adapter_name = "ftp"
    error_map = _FTP_ERRORS

    def open_fs(self) -> RemoteFS:
        return FtpFS(self.config)


class FtpSink(FileSink):
    adapter_name = "ftp"
    error_map = _FTP_ERRORS

    def open_fs(self) -> RemoteFS:
        return FtpFS(self.config)


SPEC = AdapterSpec(
    name="ftp",
    config_model=FtpSourceConfig,
    source_config_model=FtpSourceConfig,
    sink_config_model=FtpSinkConfig,
    source_cls=FtpSource,
    sink_cls=FtpSink,
    description="FTP / FTPS (ftplib): poll a directory (glob, stable-file detection, batch limit), parse CSV, "
    "fixed-width or XML in UTF-8/GBK/GB18030 into envelopes, archive each file only after its envelopes are "
    "on the bus (unreadable files to error/ with the reason); upload with a temporary name then rename, "
    "optional .sha256 file.",
)
