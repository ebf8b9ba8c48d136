"""Real Debian daemons the file and SNMP adapter tests start themselves: vsftpd, OpenSSH sshd
and net-snmp snmpd — each on a free high port bound to 127.0.0.1, configured from a temporary
directory, run in the foreground in its own process group and killed (with its children) on
``stop()``. Used as context managers by fixtures, so nothing is left running."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from waiting import wait_for

from .peers import free_port


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Daemon:
    argv: list[str]
    port: int

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv of a test daemon
            self.argv, stdout=subprocess.DEVNULL, stderr=self._errlog(), start_new_session=True,
            env={**os.environ, **getattr(self, "env", {})},
        )
        self._ready()

    def _errlog(self) -> int | object:
        self.errfile = open(self.dir / f"{type(self).__name__.lower()}.err", "ab")  # noqa: SIM115
        return self.errfile

    def _ready(self) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                err = (self.dir / f"{type(self).__name__.lower()}.err").read_text(errors="replace")
                raise AssertionError(f"{self.argv[0]} exited with {self.proc.returncode}: {err[-2000:]}")
            return _port_open(self.port)

        wait_for(up, 10, what=f"{self.argv[0]} on port {self.port}")

    def kill(self) -> None:
        """Kill the daemon and every session child (the peer dies mid-transfer)."""
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            import psutil

            try:  # session children may have left the process group (setsid): kill them by ancestry
                kids = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                kids = []
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for k in kids:
                try:
                    k.kill()
                except psutil.NoSuchProcess:
                    pass
            self.proc.wait(5)
            psutil.wait_procs(kids, timeout=5)

    def stop(self) -> None:
        self.kill()
        if getattr(self, "errfile", None):
            self.errfile.close()

    def restart(self) -> None:
        self.kill()
        deadline = time.monotonic() + 10
        while True:  # the port may linger a moment after the kill
            try:
                self.start()
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Vsftpd(Daemon):
    """Anonymous FTP with write access below ``root/in`` (the root itself is read-only, as
    vsftpd insists). ``max_rate`` (bytes/s) slows transfers so a test can cut one mid-way."""

    def __init__(self, tmp: Path, max_rate: int = 0, tls: tuple[str, str] | None = None) -> None:
        self.dir = tmp / "vsftpd"
        self.root = self.dir / "root"
        self.inbox = self.root / "in"
        (self.dir / "empty").mkdir(parents=True, exist_ok=True)
        self.inbox.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(self.inbox, 0o777)
        self.port = free_port()
        self.max_rate = max_rate
        self.tls = tls  # (cert, key): explicit FTPS required for every login and transfer

    def start(self) -> None:
        self._write_conf()
        super().start()

    def _write_conf(self) -> None:
        max_rate = self.max_rate
        pasv = 20000 + (self.port * 7) % 40000
        conf = f"""
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={self.port}
background=NO
anonymous_enable=YES
local_enable=NO
no_anon_password=YES
anon_root={self.root}
write_enable=YES
anon_upload_enable=YES
anon_mkdir_write_enable=YES
anon_other_write_enable=YES
anon_world_readable_only=NO
anon_umask=022
anon_max_rate={max_rate}
ftp_username=ftp
pasv_enable=YES
pasv_address=127.0.0.1
pasv_min_port={pasv}
pasv_max_port={pasv + 40}
connect_from_port_20=NO
seccomp_sandbox=NO
secure_chroot_dir={self.dir / "empty"}
xferlog_enable=NO
dirmessage_enable=NO
use_localtime=NO
pam_service_name=vsftpd
"""
        if self.tls:
            conf += (f"ssl_enable=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=YES\nforce_anon_data_ssl=YES\n"
                     f"require_ssl_reuse=NO\nrsa_cert_file={self.tls[0]}\nrsa_private_key_file={self.tls[1]}\n")
        (self.dir / "vsftpd.conf").write_text(conf)
        os.chmod(self.dir / "vsftpd.conf", 0o600)
        self.argv = ["/usr/sbin/vsftpd", str(self.dir / "vsftpd.conf")]


class Sshd(Daemon):
    """OpenSSH on a free port: its own host key, root login by a client key generated here.
    ``known_hosts`` holds the host key as ``[127.0.0.1]:port``; ``client_key`` is the key path."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "sshd"
        self.dir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege-separation dir sshd requires
        self.port = free_port()
        self.host_key = self.dir / "host_ed25519"
        self.client_key = self.dir / "client_ed25519"
        for key in (self.host_key, self.client_key):
            if not key.exists():
                subprocess.run(  # noqa: S603
                    [shutil.which("ssh-keygen") or "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                    check=True, timeout=20,
                )
        (self.dir / "authorized_keys").write_text(Path(str(self.client_key) + ".pub").read_text())
        self.known_hosts = self.dir / "known_hosts"
        pub = Path(str(self.host_key) + ".pub").read_text().split()
        self.known_hosts_line = f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n"
        self.known_hosts.write_text(self.known_hosts_line)
        conf = f"""
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile none
AuthorizedKeysFile {self.dir / "authorized_keys"}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
LogLevel ERROR
"""
        (self.dir / "sshd_config").write_text(conf)
        self.argv = ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.dir / "sshd_config")]


class Snmpd(Daemon):
    """net-snmp agent on a free UDP port, v2c community ``public`` (read-only) and the v3 user
    ``nms`` (authPriv SHA/AES, pass phrases ``auth-pass-1`` / ``priv-pass-1``), with a
    ``sysLocation`` and ``sysContact`` set here so a GET has known answers."""

    def __init__(self, tmp: Path, community: str = "public") -> None:
        self.dir = tmp / "snmpd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.community = community
        (self.dir / "snmpd.conf").write_text(
            f"rocommunity {community} 127.0.0.1\n"
            "sysLocation esbhub-test-lab\n"
            "sysContact noc@example.net\n"
            "sysServices 72\n"
            'createUser nms SHA "auth-pass-1" AES "priv-pass-1"\n'
            "rouser nms authPriv\n"
        )
        self.env = {"SNMP_PERSISTENT_DIR": str(self.dir / "persist")}  # never /var/lib/snmp
        self.argv = [
            "/usr/sbin/snmpd", "-f", "-Lo", "-C", "-c", str(self.dir / "snmpd.conf"),
            "-p", str(self.dir / "snmpd.pid"), "-M", "/usr/share/snmp/mibs", "-m", "",
            f"udp:127.0.0.1:{self.port}",
        ]

    def _ready(self) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"snmpd exited with {self.proc.returncode}")
            r = subprocess.run(  # noqa: S603
                ["/usr/bin/snmpget", "-v2c", "-c", self.community, "-t", "0.3", "-r", "0", "-On",
                 f"udp:127.0.0.1:{self.port}", "1.3.6.1.2.1.1.6.0"],
                capture_output=True, timeout=5, check=False,
            )
            return r.returncode == 0

        wait_for(up, 15, interval=0.1, what=f"snmpd on udp port {self.port}")


class AsgiServer:
    """An ASGI app (FastAPI / Starlette) served by uvicorn in a thread on a free loopback port,
    optionally over TLS (``certfile``/``keyfile``)."""

    def __init__(self, app, *, certfile: str | None = None, keyfile: str | None = None, lifespan: str = "off",
                 **uvicorn_options) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.scheme = "https" if certfile else "http"
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan=lifespan, timeout_graceful_shutdown=1,
                             ssl_certfile=certfile, ssl_keyfile=keyfile, **uvicorn_options)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: self.server.started, 10, what="uvicorn started")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def self_signed_cert(tmp: Path, kind: str = "ec") -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (cert path, key path); ``kind`` 'ec' or 'rsa'."""
    cert, key = tmp / f"cert-{kind}.pem", tmp / f"key-{kind}.pem"
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if kind == "ec" else ["-newkey", "rsa:2048"]
    subprocess.run(  # noqa: S603
        ["openssl", "req", "-x509", *newkey, "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    return str(cert), str(key)
