"""Conformance harness of the snmp adapter: the receiver fed by net-snmp snmpinform (informs are
retransmitted until acknowledged, so a failed emit is replayed by the sender)."""

from __future__ import annotations

import subprocess

from .conformance import Harness, harness
from .peers import free_port

NUMBER_OID = "1.3.6.1.4.1.9999.1.1"


@harness("snmp")
class SnmpHarness(Harness):
    inline_secret = ("source", {"port": 1162, "communities": ["public"]})
    feed_after_connect = True

    def source_config(self):
        self.mp.setenv("T_CONF_SNMP", "public")
        if not hasattr(self, "port"):
            self.port = free_port()
            self.procs: list[subprocess.Popen] = []
        return {"listen_host": "127.0.0.1", "port": self.port, "communities": ["${env:T_CONF_SNMP}"]}

    def feed(self, n):
        for i in range(n):
            self.procs.append(subprocess.Popen(  # noqa: S603
                ["/usr/bin/snmpinform", "-v2c", "-c", "public", "-t", "1", "-r", "30", f"udp:127.0.0.1:{self.port}", "",
                 "1.3.6.1.4.1.9999.0.1", NUMBER_OID, "i", str(i)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))

    def number_of(self, env):
        return next(int(v["value"]) for v in env.payload["varbinds"] if v["oid"] == NUMBER_OID)

    def cleanup(self):
        for p in getattr(self, "procs", []):
            p.kill()
            p.wait()
