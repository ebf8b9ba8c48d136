"""Conformance harnesses of the file adapters: ftp against vsftpd, sftp against OpenSSH sshd."""

from __future__ import annotations

from .conformance import Harness, harness
from .peers import free_port
from .peers_daemons import Sshd, Vsftpd


class _FileHarness(Harness):
    daemon: Vsftpd | Sshd | None = None

    def _conn(self) -> dict:
        raise NotImplementedError

    def _dir(self):
        raise NotImplementedError

    def _remote(self, sub: str) -> str:
        raise NotImplementedError

    def sink_config(self):
        return {**self._conn(), "directory": self._remote("out")}

    def delivered(self, env):
        return (self._dir() / "out" / f"{env.id}.json").exists()

    def source_config(self):
        return {**self._conn(), "directory": self._remote(""), "pattern": "*.csv", "format": {"type": "csv"},
                "poll_interval": 0.1, "envelope": {"type": "party.v1", "source": "files"},
                "state_url": f"sqlite:///{self.tmp_path}/state.db"}

    def feed(self, n):
        self._conn()
        body = "n\n" + "".join(f"{i}\n" for i in range(n))
        (self._dir() / "feed.csv").write_text(body)

    def cleanup(self):
        if self.daemon is not None:
            self.daemon.stop()


@harness("ftp")
class FtpHarness(_FileHarness):
    inline_secret = ("sink", {"host": "h", "password": "hunter2", "directory": "/x"})

    def _conn(self):
        if self.daemon is None:
            self.daemon = Vsftpd(self.tmp_path)
            self.daemon.start()
        return {"host": "127.0.0.1", "port": self.daemon.port, "timeout": 3}

    def _dir(self):
        return self.daemon.inbox

    def _remote(self, sub):
        return f"/in/{sub}".rstrip("/")

    def down_sink_config(self):
        return {"host": "127.0.0.1", "port": free_port(), "timeout": 1, "directory": "/x"}

    def peer_port(self):
        self._conn()
        return self.daemon.port

    def sink_config_through(self, port):
        return {**self.sink_config(), "port": port, "timeout": 1}

    def down_source_config(self):
        return {"host": "127.0.0.1", "port": free_port(), "timeout": 1, "directory": "/x", "format": {"type": "csv"},
                "poll_interval": 0.1, "envelope": {"type": "party.v1", "source": "files"},
                "state_url": f"sqlite:///{self.tmp_path}/state.db"}


@harness("sftp")
class SftpHarness(_FileHarness):
    inline_secret = ("sink", {"host": "h", "username": "u", "password": "hunter2", "directory": "/x"})

    def _conn(self):
        if self.daemon is None:
            self.daemon = Sshd(self.tmp_path)
            self.daemon.start()
            (self.tmp_path / "files").mkdir(exist_ok=True)
        return {"host": "127.0.0.1", "port": self.daemon.port, "timeout": 3, "username": "root",
                "private_key_file": str(self.daemon.client_key), "known_hosts": str(self.daemon.known_hosts)}

    def _dir(self):
        return self.tmp_path / "files"

    def _remote(self, sub):
        return str(self._dir() / sub).rstrip("/")

    def peer_port(self):
        self._conn()
        return self.daemon.port

    def sink_config_through(self, port):
        kh = self.tmp_path / "kh_proxy"
        kh.write_text(self.daemon.known_hosts_line.replace(f"]:{self.daemon.port} ", f"]:{port} "))
        return {**self.sink_config(), "port": port, "known_hosts": str(kh), "timeout": 1}

    def down_sink_config(self):
        self.mp.setenv("T_SFTP_DOWN_PW", "x")
        return {"host": "127.0.0.1", "port": free_port(), "timeout": 1, "username": "u",
                "password": "${env:T_SFTP_DOWN_PW}", "host_key_policy": "accept_new", "known_hosts": str(self.tmp_path / "kh"),
                "directory": "/x"}

    def down_source_config(self):
        return {**self.down_sink_config(), "format": {"type": "csv"}, "poll_interval": 0.1,
                "envelope": {"type": "party.v1", "source": "files"}, "state_url": f"sqlite:///{self.tmp_path}/s.db"}
