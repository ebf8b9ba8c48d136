"""Conformance harness of the soap adapter: the sink calls the hub's own SOAP endpoint (served
here by uvicorn) through its WSDL."""

from __future__ import annotations

from fastapi import FastAPI

from esbhub.adapters.soap_server import SoapOperation, SoapServiceConfig, create_router
from esbhub.bus.envelope import Envelope

from .conformance import Harness, harness
from .peers import free_port
from .peers_daemons import AsgiServer


@harness("soap")
class SoapHarness(Harness):
    inline_secret = ("sink", {"wsdl": "http://x/?wsdl", "operation": "o", "wsse": {"username": "u", "password": "hunter2"}})

    def sink_config(self):
        self.got: list[Envelope] = []
        app = FastAPI()
        svc = SoapServiceConfig(name="conf", operations=[SoapOperation(name="PublishParty", type="party.v1")])
        app.include_router(create_router([svc], emit=self.got.append, authenticate=None))
        self.server = AsgiServer(app).__enter__()
        return {"wsdl": f"{self.server.url}/soap/conf?wsdl", "operation": "PublishParty", "timeout": 3}

    def peer_port(self):
        if not hasattr(self, "server"):
            self.sink_config()
        return self.server.port

    def sink_config_through(self, port):
        return {"wsdl": f"http://127.0.0.1:{port}/soap/conf?wsdl", "operation": "PublishParty", "timeout": 1}

    def down_sink_config(self):
        return {"wsdl": f"http://127.0.0.1:{free_port()}/soap/x?wsdl", "operation": "PublishParty", "timeout": 1}

    def envelope(self, i: int = 0) -> Envelope:
        return Envelope.create("party.v1", {"source_system": "conf", "source_id": f"n{i}", "name": f"Customer {i}"},
                               source="conformance")

    def delivered(self, env):
        return any(e.payload["source_id"] == env.payload["source_id"] for e in self.got)

    def cleanup(self):
        if hasattr(self, "server"):
            self.server.__exit__(None, None, None)
