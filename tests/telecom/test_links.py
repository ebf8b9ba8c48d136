"""The ``mdm_link`` sink (esbhub/telecom/links.py) against a real MDM service on SQLite: links by
source key that the 360 view resolves through the xref when read, and links by golden id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from mdm.fakes import party, uscc
from pydantic import ValidationError

from esbhub.bus.envelope import Envelope
from esbhub.cli import main
from esbhub.config import Settings, set_process_settings
from esbhub.errors import InvalidMessage
from esbhub.mdm.service import MdmService, service_for
from esbhub.telecom.links import MdmLinkConfig, MdmLinkSink

BILL = {"kind": "bill", "ref_field": "bill_id", "source_system": "billing", "source_id_field": "customer_source_id"}


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mdm.db'}"


@pytest.fixture
def svc(url: str) -> MdmService:
    return MdmService(url)


def sink(url: str, **config: Any) -> MdmLinkSink:
    return MdmLinkSink(MdmLinkConfig.model_validate({**config, "database_url": url}))


def send(s: MdmLinkSink, payload: dict[str, Any], type_: str = "bill.v1") -> dict[str, Any] | None:
    return s.send(Envelope.create(type_, payload, source="test"))


def huaxin(system: str = "crm", sid: str = "K1") -> Any:
    return party(system, sid, "深圳市华信科技有限公司", uscc=uscc(1), city="深圳")


def yuanyang(system: str = "billing", sid: str = "C1") -> Any:
    """Another company, without a USCC: a steward may merge it with huaxin (no hard rule against it)."""
    return party(system, sid, "广州市远洋物流有限公司", city="广州")


def linked(svc: MdmService, system: str, sid: str) -> dict[str, list[dict[str, Any]]]:
    return svc.get_customer(svc.xref(system, sid)["golden_id"])["linked"]


def refs_via(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(i["ref"], i["via"]) for i in items]


def test_a_bill_linked_before_its_billing_customer_arrives_shows_once_the_customer_is_mastered(svc, url):
    out = send(sink(url, **BILL), {"bill_id": "B1", "customer_source_id": "C1", "total": "10.00"})
    assert out == {"linked": ["B1@billing:C1"]}
    svc.ingest(yuanyang(), "e1")
    [bill] = linked(svc, "billing", "C1")["bill"]
    assert (bill["ref"], bill["via"], bill["data"]["total"]) == ("B1@billing:C1", "billing:C1", "10.00")


def test_a_bill_linked_by_source_key_follows_its_record_through_merge_and_unmerge(svc, url):
    svc.ingest(huaxin("crm", "K1"), "e1")
    svc.ingest(yuanyang("billing", "C1"), "e2")
    send(sink(url, **BILL), {"bill_id": "B1", "customer_source_id": "C1"})
    svc.merge("crm:K1", "billing:C1", by="alice")
    merged = svc.xref("crm", "K1")["golden_id"]
    assert svc.xref("billing", "C1")["golden_id"] == merged
    assert refs_via(svc.get_customer(merged)["linked"]["bill"]) == [("B1@billing:C1", "billing:C1")]
    svc.unmerge(merged, ["billing:C1"], by="alice")
    assert svc.xref("billing", "C1")["golden_id"] != svc.xref("crm", "K1")["golden_id"]
    assert refs_via(linked(svc, "billing", "C1")["bill"]) == [("B1@billing:C1", "billing:C1")]
    assert "bill" not in linked(svc, "crm", "K1")


def test_the_source_system_can_come_from_the_payload(svc, url):
    svc.ingest(huaxin("crm", "K1"), "e1")
    s = sink(url, kind="account", ref_field="billing_account", source_system_field="customer_source",
             source_id_field="customer_source_id", data_fields=["order_id", "billing_account"])
    send(s, {"order_id": "ORD1", "customer_source": "crm", "customer_source_id": "K1", "billing_account": "BA-N-1",
             "lines": [{"product": "DIA"}]}, "service_order.status.v1")
    [acct] = linked(svc, "crm", "K1")["account"]
    assert (acct["ref"], acct["via"], acct["data"]) == ("BA-N-1@crm:K1", "crm:K1",
                                                        {"order_id": "ORD1", "billing_account": "BA-N-1"})


def test_a_list_of_refs_makes_one_link_per_element_read_by_dotted_paths(svc, url):
    svc.ingest(huaxin("resource", "RES7"), "e1")
    s = sink(url, kind="service", ref_field="attributes.circuit_ids", source_system="resource",
             source_id_field="source_id", data_fields=["source_id"])
    send(s, {"source_id": "RES7", "attributes": {"circuit_ids": ["CIR-1", "CIR-2"]}}, "party.v1")
    assert refs_via(linked(svc, "resource", "RES7")["service"]) == [
        ("CIR-1@resource:RES7", "resource:RES7"), ("CIR-2@resource:RES7", "resource:RES7")]


def test_an_index_in_the_path_reads_the_customer_out_of_a_list(svc, url):
    svc.ingest(huaxin("resource", "RES7"), "e1")
    s = sink(url, kind="alarm", ref_field="alarm_id", source_system="resource",
             source_id_field="customers.0.resource_customer")
    send(s, {"alarm_id": "ALM1", "customers": [{"golden_id": "G-x", "resource_customer": "RES7"}]}, "alarm.v1")
    assert refs_via(linked(svc, "resource", "RES7")["alarm"]) == [("ALM1@resource:RES7", "resource:RES7")]


@pytest.mark.parametrize(("payload", "field"), [
    ({"customer_source_id": "C1"}, "'bill_id'"),
    ({"bill_id": "B1"}, "'customer_source_id'"),
    ({"bill_id": "B1", "customer_source_id": "  "}, "'customer_source_id'"),
])
def test_a_message_without_its_ref_or_customer_is_refused_naming_the_field(url, payload, field):
    with pytest.raises(InvalidMessage, match=field):
        send(sink(url, **BILL), payload)


def test_a_customer_id_that_is_not_text_is_refused_naming_the_field(url):
    with pytest.raises(InvalidMessage, match="'customer_source_id' must be text"):
        send(sink(url, **BILL), {"bill_id": "B1", "customer_source_id": {"id": "C1"}})


def test_when_missing_skip_links_nothing_and_says_why(svc, url):
    s = sink(url, **BILL, when_missing="skip")
    assert send(s, {"bill_id": "B1"}) == {"linked": [], "skipped": "no 'customer_source_id'"}
    svc.ingest(yuanyang(), "e1")
    assert linked(svc, "billing", "C1") == {}


def test_linking_by_golden_id_refuses_a_message_without_customers_unless_told_to_skip(svc, url):
    svc.ingest(huaxin(), "e1")
    gid = svc.xref("crm", "K1")["golden_id"]
    with pytest.raises(InvalidMessage, match="'customers'"):
        send(sink(url, kind="alarm"), {"alarm_id": "A1"}, "alarm.v1")
    assert send(sink(url, kind="alarm", when_missing="skip"), {"alarm_id": "A1"}, "alarm.v1")["skipped"]
    send(sink(url, kind="alarm"), {"alarm_id": "A2", "customers": [{"golden_id": gid}]}, "alarm.v1")
    assert refs_via(linked(svc, "crm", "K1")["alarm"]) == [(f"A2@{gid}", gid)]


@pytest.mark.parametrize(("config", "why"), [
    ({"source_system": "billing"}, "needs source_id_field"),
    ({"source_id_field": "customer_source_id"}, "needs source_system .fixed. or source_system_field"),
    ({"source_system": "billing", "source_system_field": "sys", "source_id_field": "x"}, "not both"),
    ({"customers_field": "customers", "source_system": "billing", "source_id_field": "x"}, "exclude each other"),
])
def test_exactly_one_complete_link_mode_is_accepted(config, why):
    with pytest.raises(ValidationError, match=why):
        MdmLinkConfig.model_validate({"kind": "bill", "ref_field": "bill_id", **config})


def test_route_lint_names_a_half_configured_source_key(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "name: r\nfrom: {topic: bill.v1}\nto:\n  - adapter: mdm_link\n"
        "    config: {kind: bill, ref_field: bill_id, source_system: billing}\n"
        "on_error: {dead_letter: store}\n", encoding="utf-8")
    r = CliRunner().invoke(main, ["routes", "lint", str(tmp_path)])
    assert r.exit_code == 1
    assert "to[0].config" in r.output and "needs source_id_field" in r.output, r.output




def test_without_a_database_url_the_sink_shares_the_mdm_service_of_the_worker_s_settings(tmp_path):
    """As `esbhub worker --config hub.yaml` runs it: the worker's settings, ``mdm`` section included,
    not the environment alone — and so the very service the worker's MDM consumer ingests with."""
    worker = Settings(data_dir=tmp_path, mdm={"tiering": {"thresholds": {"gold": 1.0}}})
    before = set_process_settings(worker)
    try:
        sink = MdmLinkSink(MdmLinkConfig(kind="alarm"))
        assert sink._service() is service_for(worker)
    finally:
        set_process_settings(before)
