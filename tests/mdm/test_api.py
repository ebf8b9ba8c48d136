"""The MDM HTTP API over the real app, embedded broker and API keys."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from esbhub.api.app import create_app
from esbhub.auth.store import ApiKey, ApiKeyStore
from esbhub.bus.broker import create_broker
from esbhub.bus.envelope import Envelope
from esbhub.config import Settings
from esbhub.db import engine_for
from esbhub.mdm.service import MdmService
from esbhub.telecom.links import MdmLinkConfig, MdmLinkSink
from mdm.fakes import party, review_pair, uscc


class Harness:
    def __init__(self, client: TestClient, svc: MdmService, broker: Any, keys: dict[str, str], queue: str) -> None:
        self.client, self.svc, self.broker, self.keys, self.queue = client, svc, broker, keys, queue

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


@pytest.fixture
def hub(tmp_path: Path, unique: str) -> Iterator[Harness]:
    settings = Settings(data_dir=tmp_path / "var")
    url = settings.effective_database_url
    svc = MdmService(url)
    ApiKey.__table__.create(engine_for(url), checkfirst=True)
    store = ApiKeyStore(url)
    keys = {
        "reader": store.create("portal", scopes=["read"])[1],
        "steward": store.create("alice", scopes=["steward", "read"])[1],
        "ingest": store.create("billing", scopes=["ingest"])[1],
    }
    broker = create_broker(settings.effective_broker_url, exchange=settings.exchange)
    broker.connect()
    broker.declare_queue(unique, ["party.golden.#"])
    app = create_app(settings)
    app.state.mdm = svc
    with TestClient(app) as client:
        yield Harness(client, svc, broker, keys, unique)
    broker.close()


def seed(svc: MdmService) -> None:
    a, b = review_pair()
    svc.ingest(a, "e1")
    svc.ingest(party("crm", "9", "广州市远洋物流有限公司", uscc=uscc(2), city="广州"), "e2")
    svc.ingest(b, "e3")


def test_customer_360_search_xref_and_history_need_read_scope(hub):
    seed(hub.svc)
    c = hub.client
    assert c.get("/v1/customers/G0000000001").status_code == 401
    assert c.get("/v1/customers/G0000000001", headers=hub.h("ingest")).status_code == 403
    body = c.get("/v1/customers/G0000000001", headers=hub.h("reader")).json()
    assert body["source_records"][0]["key"] == "crm:1" and body["attributes"]["name"]["lineage"]["rule"]
    hits = c.get("/v1/customers", params={"q": "华信科技"}, headers=hub.h("reader")).json()["results"]
    assert hits[0]["golden_id"] == "G0000000001"
    assert c.get("/v1/xref/crm/9", headers=hub.h("reader")).json()["golden_id"] == "G0000000002"
    assert c.get("/v1/xref/crm/404", headers=hub.h("reader")).status_code == 404
    versions = c.get("/v1/customers/G0000000001/history", headers=hub.h("reader")).json()["versions"]
    assert [v["version"] for v in versions] == [1]
    now = datetime.now(UTC).isoformat()
    r = c.get("/v1/customers/G0000000001/history", params={"as_of": now}, headers=hub.h("reader"))
    assert r.json()["version"]["source_keys"] == ["crm:1"]
    assert c.get("/v1/customers/G0000000001/history", params={"as_of": "2001-01-01T00:00:00Z"},
                 headers=hub.h("reader")).status_code == 404


def test_the_360_view_lists_linked_items_by_kind_with_the_key_each_came_through(hub):
    """What the routes' ``mdm_link`` sinks write shows on GET /v1/customers/{id}: grouped by kind,
    each with its own id (``item``) and the source key or golden id it was linked by (``via``)."""
    seed(hub.svc)
    db = hub.svc.url
    bills = MdmLinkSink(MdmLinkConfig(kind="bill", ref_field="bill_id", source_system="crm",
                                      source_id_field="customer_source_id", database_url=db))
    bills.send(Envelope.create("bill.v1", {"bill_id": "B1", "customer_source_id": "9", "total": "10.00"}, source="t"))
    alarms = MdmLinkSink(MdmLinkConfig(kind="alarm", database_url=db))
    alarms.send(Envelope.create("alarm.v1", {"alarm_id": "A1", "customers": [{"golden_id": "G0000000002"}]}, source="t"))
    body = hub.client.get("/v1/customers/G0000000002", headers=hub.h("reader")).json()
    assert body["linked"] == {
        "bill": [{"ref": "B1@crm:9", "item": "B1", "via": "crm:9", "at": body["linked"]["bill"][0]["at"],
                  "data": {"bill_id": "B1", "customer_source_id": "9", "total": "10.00"}}],
        "alarm": [{"ref": "A1@G0000000002", "item": "A1", "via": "G0000000002", "at": body["linked"]["alarm"][0]["at"],
                   "data": {"alarm_id": "A1", "customers": [{"golden_id": "G0000000002"}]}}],
    }


def test_steward_queue_decide_merge_unmerge_are_audited_and_publish_events(hub):
    seed(hub.svc)
    c = hub.client
    assert c.get("/v1/steward/tasks", headers=hub.h("reader")).status_code == 403
    (t,) = c.get("/v1/steward/tasks", headers=hub.h("steward")).json()["tasks"]
    detail = c.get(f"/v1/steward/tasks/{t['id']}", headers=hub.h("steward")).json()
    assert detail["evidence"] and detail["side_by_side"]["a"] and detail["side_by_side"]["b"]
    r = c.post(f"/v1/steward/tasks/{t['id']}/decide", json={"same": True, "reason": "same tax id on contract"},
               headers=hub.h("steward"))
    assert r.status_code == 200 and r.json()["events_pending"] == 0
    assert c.post(f"/v1/steward/tasks/{t['id']}/decide", json={"same": False}, headers=hub.h("steward")).status_code == 409
    r = c.post("/v1/customers/merge", json={"a": "G0000000001", "b": "crm:9", "reason": "group contract"},
               headers=hub.h("steward"))
    assert r.status_code == 200
    r = c.post("/v1/customers/G0000000001/unmerge", json={"source_keys": ["crm:9"], "reason": "undo"},
               headers=hub.h("steward"))
    assert r.status_code == 200
    assert c.post("/v1/customers/G0000000001/unmerge", json={"source_keys": ["nope:1"]},
                  headers=hub.h("steward")).status_code == 422
    audit = [(a["action"], a["actor"].split(":")[-1]) for a in hub.svc.audit()]
    assert audit == [("unmerge", "alice"), ("merge", "alice"), ("decide", "alice")]
    got = []
    while (d := hub.broker.get(hub.queue, timeout=0.2)) is not None:
        got.append((d.envelope.type, d.envelope.payload["golden_id"], d.envelope.payload["seq"]))
        d.ack()
    per_golden: dict[str, list[int]] = {}
    for _t, gid, seq in got:
        per_golden.setdefault(gid, []).append(seq)
    assert per_golden and all(s == sorted(s) for s in per_golden.values())
    assert ("party.golden.unmerged.v1", "G0000000002", 3) in got


def test_a_merge_of_two_legal_entities_is_a_409_naming_the_rule_and_changes_nothing(hub):
    hub.svc.ingest(party("crm", "20", "北京市星河贸易有限公司", uscc=uscc(20), city="北京"), "e1")
    hub.svc.ingest(party("crm", "21", "上海市蓝海贸易有限公司", uscc=uscc(21), city="上海"), "e2")
    before = hub.svc.snapshot()
    r = hub.client.post("/v1/customers/merge", json={"a": "crm:20", "b": "crm:21", "reason": "one group"},
                        headers=hub.h("steward"))
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "conflict"
    assert error["message"] == (
        "merging G0000000001 and G0000000002 is refused: crm:20 and crm:21 can never be one customer "
        "(cannot_link:uscc_conflict: two different valid USCCs are two legal entities); "
        "correct the source record if it is wrong")
    assert hub.svc.snapshot() == before and hub.svc.audit() == [] and hub.svc.pending_events() == 0
    assert hub.broker.get(hub.queue, timeout=0.2) is None  # no event


def test_a_steward_override_is_set_validated_audited_and_removed_over_http(hub):
    seed(hub.svc)
    c = hub.client
    url = "/v1/customers/G0000000001/overrides/industry"
    assert c.put(url, json={"value": "金融"}, headers=hub.h("reader")).status_code == 403
    r = c.put(url, json={"value": "金融", "reason": "contract"}, headers=hub.h("steward"))
    assert r.status_code == 200 and r.json()["events"][0]["change"] == "updated"
    body = c.get("/v1/customers/G0000000001", headers=hub.h("reader")).json()
    assert body["attributes"]["industry"] == {"value": "金融", "lineage": {"source_system": "steward",
                                                                         "source_id": None, "rule": "override"}}
    bad = c.put("/v1/customers/G0000000001/overrides/phones", json={"value": "0755-1"}, headers=hub.h("steward"))
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"] == "body.value"
    bad = c.put("/v1/customers/G0000000001/overrides/colour", json={"value": "red"}, headers=hub.h("steward"))
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"] == "path.attribute"
    assert "no golden attribute 'colour'" in bad.json()["error"]["message"]
    bad = c.put(url, json={"value": None}, headers=hub.h("steward"))
    assert bad.status_code == 422 and "DELETE" in bad.json()["error"]["details"][0]["msg"]
    assert c.put("/v1/customers/G0000000404/overrides/industry", json={"value": "x"},
                 headers=hub.h("steward")).status_code == 404
    r = c.delete(url, params={"reason": "wrong"}, headers=hub.h("steward"))
    assert r.status_code == 200
    body = c.get("/v1/customers/G0000000001", headers=hub.h("reader")).json()
    assert "industry" not in body["attributes"]
    assert [(a["action"], a["reason"]) for a in hub.svc.audit()][:2] == [("override", "wrong"), ("override", "contract")]


def details(r: Any) -> list[tuple[str, str]]:
    return [(d["loc"], d["msg"]) for d in r.json()["error"]["details"]]


def test_a_merge_with_an_unknown_reference_names_the_field_that_holds_it(hub):
    seed(hub.svc)
    c, h = hub.client, hub.h("steward")
    r = c.post("/v1/customers/merge", json={"a": "G0000000001", "b": "crm:404"}, headers=h)
    assert r.status_code == 404 and details(r) == [("body.b", "no golden record or source key 'crm:404'")]
    r = c.post("/v1/customers/merge", json={"a": "G0000000404", "b": "crm:9"}, headers=h)
    assert r.status_code == 404 and details(r) == [("body.a", "no golden record or source key 'G0000000404'")]
    r = c.post("/v1/customers/merge", json={"a": "", "b": "crm:9"}, headers=h)
    assert r.status_code == 422 and details(r)[0][0] == "body.a"
    assert hub.svc.audit() == []


def test_an_unmerge_names_each_bad_source_key_by_its_index_and_why(hub):
    seed(hub.svc)
    c, h = hub.client, hub.h("steward")
    hub.svc.merge("G0000000001", "crm:9", by="alice")
    url = "/v1/customers/G0000000001/unmerge"
    r = c.post(url, json={"source_keys": ["crm:9", "nope:1"]}, headers=h)
    assert r.status_code == 422
    assert details(r) == [("body.source_keys.1", "'nope:1' is not a member of G0000000001 "
                                                 "(its members: crm:1, crm:9)")]
    r = c.post(url, json={"source_keys": ["crm:9", "crm9", ":1", "crm: 9"]}, headers=h)
    assert r.status_code == 422
    assert [(loc, msg.split(", e.g.")[0]) for loc, msg in details(r)] == [
        ("body.source_keys.1", "Value error, 'crm9' is not a source key: expected 'system:id'"),
        ("body.source_keys.2", "Value error, ':1' has no system (before ':'); expected 'system:id'"),
        ("body.source_keys.3", "Value error, 'crm: 9': its id (after ':') has spaces around it"),
    ]
    r = c.post(url, json={"source_keys": ["crm:1", "crm:9"]}, headers=h)
    assert r.status_code == 422 and details(r) == [
        ("body.source_keys", "names every member of G0000000001: leave at least one")]
    r = c.post(url, json={"source_keys": []}, headers=h)
    assert r.status_code == 422 and details(r)[0][0] == "body.source_keys"
    r = c.post("/v1/customers/G0000000404/unmerge", json={"source_keys": ["crm:9"]}, headers=h)
    assert r.status_code == 404 and details(r) == [("path.golden_id", "no golden record or source key 'G0000000404'")]
    assert [a["action"] for a in hub.svc.audit()] == ["merge"]


def test_not_found_answers_and_a_blank_search_name_the_parameter(hub):
    seed(hub.svc)
    c = hub.client
    r = c.get("/v1/customers/G0000000404", headers=hub.h("reader"))
    assert r.status_code == 404 and details(r) == [("path.golden_id", "no golden record 'G0000000404'")]
    r = c.get("/v1/steward/tasks/404", headers=hub.h("steward"))
    assert r.status_code == 404 and details(r) == [("path.task_id", "no steward task 404")]
    r = c.get("/v1/customers/G0000000001/history", params={"as_of": "2001-01-01T00:00:00Z"}, headers=hub.h("reader"))
    assert r.status_code == 404 and details(r)[0][0] == "query.as_of"
    r = c.get("/v1/customers", params={"q": "   "}, headers=hub.h("reader"))
    assert r.status_code == 422 and details(r)[0][0] == "query.q" and "only spaces" in details(r)[0][1]
    r = c.get("/v1/customers", params={"q": ""}, headers=hub.h("reader"))
    assert r.status_code == 422 and details(r)[0][0] == "query.q"


# ------------------------------------------------------------------ the audit trail

AUDIT = "/v1/steward/audit"


@pytest.fixture
def audited(hub: Harness) -> dict[str, int]:
    """Four steward actions by two stewards, through the API: alice decides the review task 'same'
    and merges crm:9 into G0000000001; bob splits crm:9 off again and overrides its industry.
    Returns each action's audit entry id."""
    hub.keys["bob"] = ApiKeyStore(hub.svc.url).create("bob", scopes=["steward", "read"])[1]
    seed(hub.svc)
    c = hub.client
    (t,) = c.get("/v1/steward/tasks", headers=hub.h("steward")).json()["tasks"]
    steps = [
        ("alice", "post", f"/v1/steward/tasks/{t['id']}/decide", {"same": True, "reason": "same contract"}),
        ("alice", "post", "/v1/customers/merge", {"a": "G0000000001", "b": "crm:9", "reason": "group"}),
        ("bob", "post", "/v1/customers/G0000000001/unmerge", {"source_keys": ["crm:9"], "reason": "not the group"}),
        ("bob", "put", "/v1/customers/G0000000002/overrides/industry", {"value": "物流", "reason": "contract"}),
    ]
    for who, method, url, body in steps:
        assert getattr(c, method)(url, json=body, headers=hub.h("steward" if who == "alice" else who)).status_code == 200
    ids = [e["id"] for e in hub.svc.audit()]
    return dict(zip(["override", "unmerge", "merge", "decide"], ids, strict=True))


def trail(hub: Harness, who: str = "reader", **params: Any) -> list[str]:
    r = hub.client.get(AUDIT, params=params, headers=hub.h(who))
    assert r.status_code == 200, r.text
    return [e["action"] for e in r.json()["entries"]]


def test_the_audit_trail_shows_who_when_what_on_what_and_why_newest_first(hub, audited):
    r = hub.client.get(AUDIT, headers=hub.h("reader"))
    assert r.status_code == 200 and r.json()["next_cursor"] is None
    entries = r.json()["entries"]
    assert [(e["action"], e["target"], e["actor"].split(":")[-1], e["reason"]) for e in entries] == [
        ("override", "G0000000002.industry", "bob", "contract"),
        ("unmerge", "G0000000001", "bob", "not the group"),
        ("merge", "G0000000001+G0000000002", "alice", "group"),
        ("decide", "task:1", "alice", "same contract"),
    ]
    assert entries[0]["detail"] == {"value": "物流"} and entries[1]["detail"]["split"] == ["crm:9"]
    assert [e["id"] for e in entries] == sorted(audited.values(), reverse=True)
    assert all(datetime.fromisoformat(e["at"]).tzinfo is not None for e in entries)


def test_the_audit_trail_filters_by_record_touched_actor_and_action(hub, audited):
    # crm:9: merged in, split off, and the golden record it went back to overridden — not the decision
    assert trail(hub, target="crm:9") == ["override", "unmerge", "merge"]
    # the retired id is found by the merge that retired it and the unmerge that brought it back
    assert trail(hub, target="G0000000002") == ["override", "unmerge", "merge"]
    assert trail(hub, target="crm:1") == ["unmerge", "merge", "decide"]
    assert trail(hub, target="task:1") == ["decide"]
    assert trail(hub, target="crm:404") == []
    bob = hub.client.get(AUDIT, params={"action": "override"}, headers=hub.h("reader")).json()["entries"][0]["actor"]
    assert trail(hub, actor=bob) == ["override", "unmerge"]
    assert trail(hub, action="merge") == ["merge"]
    assert trail(hub, target="crm:9", actor=bob, action="unmerge") == ["unmerge"]
    assert trail(hub, target="crm:1", action="override") == []


def test_the_audit_trail_filters_by_time_converting_other_zones_to_utc(hub, audited):
    import sqlalchemy as sa

    from esbhub.mdm.store import Audit

    at = {"decide": "2026-03-01T00:00:00", "merge": "2026-03-01T02:00:00", "unmerge": "2026-03-02T00:00:00",
          "override": "2026-03-03T00:00:00"}
    with hub.svc.Session.begin() as s:
        for action, ts in at.items():
            s.execute(sa.update(Audit).where(Audit.id == audited[action])
                      .values(at=datetime.fromisoformat(ts).replace(tzinfo=UTC)))
    assert trail(hub, since="2026-03-01T02:00:00Z") == ["override", "unmerge", "merge"]  # since: at or after
    assert trail(hub, until="2026-03-02T00:00:00Z") == ["merge", "decide"]  # until: before
    # 09:30 in Beijing is 01:30 UTC: after the decision, before the merge
    assert trail(hub, since="2026-03-01T09:30:00+08:00", until="2026-03-02T00:00:00") == ["merge"]


def test_audit_pages_follow_the_cursor_and_stay_stable_while_entries_are_written(hub, audited):
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 1} if cursor is None else {"limit": 1, "cursor": cursor}
        page = hub.client.get(AUDIT, params=params, headers=hub.h("reader")).json()
        seen += [e["id"] for e in page["entries"]]
        if len(seen) == 2:  # a steward acts while the reviewer pages: an offset would show entry 2 again
            r = hub.client.delete("/v1/customers/G0000000002/overrides/industry", headers=hub.h("steward"))
            assert r.status_code == 200
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(audited.values(), reverse=True)
    page = hub.client.get(AUDIT, params={"limit": 3}, headers=hub.h("reader")).json()
    assert [e["action"] for e in page["entries"]] == ["override", "override", "unmerge"]
    rest = hub.client.get(AUDIT, params={"limit": 3, "cursor": page["next_cursor"]}, headers=hub.h("reader")).json()
    assert [e["action"] for e in rest["entries"]] == ["merge", "decide"] and rest["next_cursor"] is None


def test_bad_audit_filters_are_422_naming_the_query_field(hub, audited):
    c = hub.client
    for params, loc in [
        ({"since": "yesterday"}, "query.since"),
        ({"until": "2026-13-01"}, "query.until"),
        ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-02T08:00:00+08:00"}, "query.until"),
        ({"limit": 501}, "query.limit"),
        ({"limit": 0}, "query.limit"),
        ({"cursor": 0}, "query.cursor"),
        ({"cursor": "abc"}, "query.cursor"),
        ({"action": "delete"}, "query.action"),
        ({"target": "  "}, "query.target"),
        ({"actor": ""}, "query.actor"),
    ]:
        r = c.get(AUDIT, params=params, headers=hub.h("reader"))
        assert r.status_code == 422 and [d[0] for d in details(r)] == [loc], (params, r.text)
    r = c.get(AUDIT, params={"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, headers=hub.h("reader"))
    assert "is not after since" in details(r)[0][1]


def test_the_audit_trail_needs_the_read_scope(hub, audited):
    c = hub.client
    assert c.get(AUDIT).status_code == 401
    assert c.get(AUDIT, headers=hub.h("ingest")).status_code == 403
    only_steward = ApiKeyStore(hub.svc.url).create("carol", scopes=["steward"])[1]
    r = c.get(AUDIT, headers={"Authorization": f"Bearer {only_steward}"})
    assert r.status_code == 403 and "'read'" in r.json()["error"]["message"]
    assert len(trail(hub, "reader")) == len(trail(hub, "steward")) == 4


def test_every_audit_filter_is_answered_through_an_index(hub, audited):
    """SQLite's plan of each query the trail runs: mdm_audit is never read whole to filter it."""
    import sqlalchemy as sa

    eng = engine_for(hub.svc.url)
    ran: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "mdm_audit" in statement:
            ran.append((statement, parameters))

    actor = hub.svc.audit(1)[0]["actor"]
    filters: list[dict[str, Any]] = [{"target": "crm:9"}, {"actor": actor}, {"action": "merge"},
                                     {"since": datetime(2026, 1, 1, tzinfo=UTC), "until": datetime(2026, 1, 2, tzinfo=UTC)}]
    for f in filters:
        for before in (None, audited["unmerge"]):  # the first page, and one after a cursor
            ran.clear()
            sa.event.listen(eng, "before_cursor_execute", keep)
            try:
                hub.svc.audit(10, before=before, **f)
            finally:
                sa.event.remove(eng, "before_cursor_execute", keep)
            ((statement, parameters),) = ran
            with eng.connect() as conn:
                plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
            assert not [p for p in plan if p.startswith("SCAN mdm_audit") and "INDEX" not in p], (f, plan)
