"""MdmService behaviour on SQLite and PostgreSQL, with the real matching engine."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from esbhub.mdm.match import Matcher
from esbhub.mdm.service import Conflict, MdmService
from esbhub.mdm.store import Audit, Constraint, Golden, GoldenHistory, Link, Outbox, SourceVersion, Task, Xref
from mdm.fakes import db_fixture_url, party, review_pair, uscc

U1, U2 = uscc(1), uscc(2)


BOTH = pytest.mark.parametrize("url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


@pytest.fixture(params=["sqlite"])
def url(request, tmp_path, unique) -> str:
    """SQLite by default; tests marked BOTH also run on PostgreSQL."""
    return db_fixture_url(request, tmp_path, unique)


@pytest.fixture
def svc(url) -> MdmService:
    return MdmService(url)


def crm1(**kw):
    return party("crm", "1", "深圳市华信科技有限公司", uscc=U1, phones=["0755-88886666"], city="深圳",
                 address="广东省深圳市南山区科技园路1号", **kw)


def bill1(**kw):
    attrs = kw.pop("attributes", {"billing_account": "BA1", "monthly_revenue": "1200000"})
    return party("billing", "A1", "华信科技(深圳)有限责任公司", uscc=U1, phones=["0755-88886666"], city="深圳",
                 attributes=attrs, **kw)


def other_company():
    return party("crm", "9", "广州市远洋物流有限公司", uscc=U2, phones=["020-33334444"], city="广州")


def unregistered_company():
    """Another customer, without a USCC: no cannot-link rule keeps a steward from merging it with
    crm1() (a steward may know better than the engine that two names are one customer)."""
    return party("crm", "9", "广州市远洋物流有限公司", phones=["020-33334444"], city="广州")


def kinds(events):
    return [(e.type, e.payload["golden_id"], e.payload["seq"]) for e in events]


@BOTH
def test_same_company_from_two_systems_becomes_one_golden_record_with_lineage_on_every_value(svc):
    svc.ingest(crm1(), "e1")
    ev = svc.ingest(bill1(), "e2")
    assert kinds(ev) == [("party.golden.updated.v1", "G0000000001", 2)]
    c = svc.get_customer("G0000000001")
    assert sorted(r["key"] for r in c["source_records"]) == ["billing:A1", "crm:1"]
    assert c["attributes"]["billing_account"]["value"] == "BA1"
    assert c["attributes"]["billing_account"]["lineage"]["source_system"] == "billing"
    for attr, v in c["attributes"].items():
        lin = v["lineage"]
        for item in (lin if isinstance(lin, list) else [lin]):
            assert item["source_system"] and item["rule"], attr
    assert c["tier"] == "A"
    assert svc.xref("billing", "A1")["golden_id"] == "G0000000001"


@BOTH
def test_redelivered_envelope_returns_the_same_events_and_changes_nothing(svc):
    first = svc.ingest(crm1(), "e1")
    before = svc.snapshot()
    again = svc.ingest(crm1(), "e1")
    assert [e.id for e in again] == [e.id for e in first]
    assert svc.snapshot() == before


def test_redelivery_returns_each_event_exactly_as_first_returned_even_after_later_versions(svc):
    first = svc.ingest_many([(crm1(), "e1", None), (bill1(), "e2", None), (other_company(), "e3", None)])
    assert first and any(e.payload["attributes"] and e.payload["source_keys"] for e in first)
    later = svc.ingest(crm1(status="suspended"), "e4")  # a later version of the same golden record
    again = svc.ingest_many([(crm1(), "e1", None), (bill1(), "e2", None), (other_company(), "e3", None)])
    assert [e.model_dump(mode="json") for e in again] == [e.model_dump(mode="json") for e in first]
    assert [e.to_bytes() for e in again] == [e.to_bytes() for e in first]
    assert svc.ingest(crm1(status="suspended"), "e4") == later


def test_unchanged_source_version_is_ignored_and_each_change_is_kept_as_a_version(svc):
    svc.ingest(crm1(), "e1")
    assert svc.ingest(crm1(), "e2") == []
    ev = svc.ingest(crm1(status="suspended"), "e3")
    assert kinds(ev) == [("party.golden.updated.v1", "G0000000001", 2)]
    with svc.Session() as s:
        versions = s.execute(sa.select(SourceVersion.version, SourceVersion.envelope_id)
                             .where(SourceVersion.source_id == "1").order_by(SourceVersion.version)).all()
    assert [tuple(v) for v in versions] == [(1, "e1"), (2, "e3")]


def test_two_different_valid_usccs_never_merge_even_with_the_same_name(svc):
    svc.ingest(crm1(), "e1")
    svc.ingest(party("billing", "B7", "深圳市华信科技有限公司", uscc=U2, phones=["0755-88886666"], city="深圳"), "e2")
    assert svc.partition_now() == {frozenset({"crm:1"}), frozenset({"billing:B7"})}


def test_branch_stays_its_own_golden_record_linked_to_its_head_office(svc):
    svc.ingest(crm1(), "e1")
    svc.ingest(party("res", "R2", "深圳市华信科技有限公司南山分公司", uscc=U1, city="深圳"), "e2")
    assert len(svc.partition_now()) == 2
    branch = svc.xref("res", "R2")["golden_id"]
    h = svc.get_customer("G0000000001")["hierarchy"]
    assert [(c["golden_id"], c["kind"]) for c in h["children"]] == [(branch, "branch")]
    assert svc.get_customer(branch)["hierarchy"]["parents"][0]["golden_id"] == "G0000000001"


@BOTH
def test_merge_keeps_the_oldest_id_and_unmerge_restores_the_prior_state_exactly(svc, url):
    svc.ingest(crm1(), "e1")
    svc.ingest(unregistered_company(), "e2")
    before = svc.snapshot()
    ev = svc.merge("G0000000002", "G0000000001", by="alice", reason="same customer per contract")
    assert sorted((e.payload["golden_id"], e.payload["change"], e.payload["status"]) for e in ev) == [
        ("G0000000001", "merged", "active"), ("G0000000002", "merged", "retired")]
    assert svc.golden("G0000000002")["merged_into"] == "G0000000001"
    assert svc.partition_now() == {frozenset({"crm:1", "crm:9"})}
    ev = svc.unmerge("G0000000001", ["crm:9"], by="bob", reason="wrong merge")
    assert {e.payload["golden_id"]: e.payload["change"] for e in ev} == {"G0000000001": "unmerged",
                                                                         "G0000000002": "unmerged"}
    assert svc.snapshot() == before
    # nothing lost: every version of both golden records is still there
    with svc.Session() as s:
        hist = s.execute(sa.select(GoldenHistory.golden_id, GoldenHistory.version, GoldenHistory.change)
                         .order_by(GoldenHistory.golden_id, GoldenHistory.version)).all()
    assert [tuple(h) for h in hist] == [("G0000000001", 1, "created"), ("G0000000001", 2, "merged"),
                                         ("G0000000001", 3, "unmerged"), ("G0000000002", 1, "created"),
                                         ("G0000000002", 2, "merged"), ("G0000000002", 3, "unmerged")]
    actions = [(a["actor"], a["action"]) for a in svc.audit()]
    assert actions == [("bob", "unmerge"), ("alice", "merge")]


def test_unmerge_of_an_engine_merge_sticks_across_rematch(svc):
    svc.ingest(crm1(), "e1")
    svc.ingest(bill1(), "e2")
    svc.unmerge("G0000000001", ["billing:A1"], by="carol", reason="different legal entity")
    part = svc.partition_now()
    assert part == {frozenset({"crm:1"}), frozenset({"billing:A1"})}
    svc.rematch()
    assert svc.partition_now() == part
    with pytest.raises(Conflict):
        svc.merge("crm:1", "billing:A1", by="dave")


def test_a_merge_is_checked_against_every_member_not_only_the_two_records_named(svc):
    svc.ingest(crm1(), "e1")
    svc.ingest(bill1(), "e2")
    svc.ingest(other_company(), "e3")
    before = svc.snapshot()
    with pytest.raises(Conflict, match="billing:A1 and crm:9 .*uscc_conflict"):
        svc.merge("G0000000001", "crm:9", by="dave")
    assert svc.snapshot() == before


def stored(svc: MdmService) -> dict:
    """Everything a steward action writes: golden records and xref, their history, constraints,
    tasks, the audit trail and the outbox of events."""
    out = svc.snapshot()
    with svc.Session() as s:
        for model in (GoldenHistory, Constraint, Audit, Outbox):
            out[model.__tablename__] = s.execute(sa.select(sa.func.count()).select_from(model)).scalar()
        out["tasks"] = s.execute(sa.select(Task.id, Task.status, Task.decision).order_by(Task.id)).all()
    return out


@BOTH
def test_a_steward_merge_of_two_different_valid_usccs_is_refused_naming_the_rule_and_changes_nothing(svc):
    svc.ingest(crm1(), "e1")
    svc.ingest(other_company(), "e2")
    before = stored(svc)
    with pytest.raises(Conflict) as exc:
        svc.merge("G0000000001", "G0000000002", by="alice", reason="same group")
    assert exc.value.message.startswith("merging G0000000001 and G0000000002 is refused: crm:1 and crm:9 ")
    assert "cannot_link:uscc_conflict: two different valid USCCs are two legal entities" in exc.value.message
    assert stored(svc) == before and svc.pending_events() == 0


def test_a_branch_is_never_merged_into_its_head_office_by_a_steward(svc):
    svc.ingest(crm1(), "e1")
    svc.ingest(party("res", "R2", "深圳市华信科技有限公司南山分公司", uscc=U1, city="深圳"), "e2")
    branch = svc.xref("res", "R2")["golden_id"]
    before = stored(svc)
    with pytest.raises(Conflict, match=r"crm:1 and res:R2 can never be one customer \(cannot_link:branch_vs_head: "
                                       "a branch is its own entity"):
        svc.merge("G0000000001", branch, by="alice")
    assert stored(svc) == before


def test_a_steward_same_on_a_task_whose_golden_records_hold_two_legal_entities_is_refused_and_the_task_stays_open(svc):
    t = review_task(svc)  # crm:1 and res:R1, neither with a USCC
    svc.ingest(party("crm", "20", "北京市星河贸易有限公司", uscc=uscc(20), city="北京"), "e3")
    svc.ingest(party("crm", "21", "上海市蓝海贸易有限公司", uscc=uscc(21), city="上海"), "e4")
    svc.merge("crm:1", "crm:20", by="alice")
    svc.merge("res:R1", "crm:21", by="alice")
    before = stored(svc)
    with pytest.raises(Conflict, match=f"deciding task {t['id']} 'same' is refused: crm:20 and crm:21 .*uscc_conflict"):
        svc.decide(t["id"], same=True, by="erin")
    assert stored(svc) == before and svc.task(t["id"])["status"] == "open"
    svc.decide(t["id"], same=False, by="erin")  # what the steward can answer


def test_a_record_whose_source_now_carries_another_valid_uscc_leaves_the_golden_record_a_steward_made(svc):
    svc.ingest(crm1(), "e1")
    svc.ingest(unregistered_company(), "e2")
    svc.merge("G0000000001", "G0000000002", by="alice")
    ev = svc.ingest(other_company(), "e3")  # crm:9's source now gives it its (valid, other) USCC
    assert svc.partition_now() == {frozenset({"crm:1"}), frozenset({"crm:9"})}
    assert {e.payload["golden_id"]: e.payload["change"] for e in ev} == {"G0000000001": "unmerged",
                                                                         "G0000000002": "unmerged"}


@BOTH
def test_review_pair_opens_one_task_with_evidence_and_not_same_sticks_across_rematch(svc):
    a, b = review_pair()
    svc.ingest(a, "e1")
    svc.ingest(b, "e2")
    tasks = svc.tasks()
    assert len(tasks) == 1
    t = svc.task(tasks[0]["id"])
    assert t["evidence"] and t["side_by_side"]["a"]["name"] and t["side_by_side"]["b"]["name"]
    svc.decide(t["id"], same=False, by="erin", reason="different companies")
    svc.rematch()
    assert len(svc.partition_now()) == 2
    assert svc.tasks() == []
    assert svc.task(t["id"])["decision"] == "not_same"


def review_task(svc) -> dict:
    """Ingest the review pair of ``mdm.fakes`` (crm:1, res:R1); return its one open steward task."""
    a, b = review_pair()
    svc.ingest(a, "e1")
    svc.ingest(b, "e2")
    (t,) = svc.tasks()
    return t


@BOTH
def test_an_open_task_whose_two_records_come_to_share_a_golden_record_is_made_obsolete(svc):
    t = review_task(svc)
    assert svc.task(t["id"])["status"] == "open"
    # the resource system's record now carries the CRM record's phone and address: a match
    svc.ingest(party("res", "R1", "华信科技有限公司", phones=["0755-88886666"], city="深圳",
                     address="广东省深圳市南山区科技园路1号", updated=datetime(2026, 2, 1, tzinfo=UTC)), "e3")
    assert svc.partition_now() == {frozenset({"crm:1", "res:R1"})}
    assert svc.tasks() == []
    assert svc.task(t["id"])["status"] == "obsolete"


@BOTH
def test_a_second_review_pair_between_the_same_two_golden_records_opens_no_second_task(svc):
    review_task(svc)
    svc.ingest(party("res", "R2", "华信科技有限公司", city="深圳"), "e3")  # joins res:R1, in review with crm:1
    assert svc.partition_now() == {frozenset({"crm:1"}), frozenset({"res:R1", "res:R2"})}
    assert [(t["a"], t["b"]) for t in svc.tasks()] == [("crm:1", "res:R1")]


def test_steward_same_merges_the_pair_and_sticks_across_rematch(svc):
    t = review_task(svc)
    ev = svc.decide(t["id"], same=True, by="erin")
    assert [e.payload["change"] for e in ev] == ["merged", "merged"]
    svc.rematch()
    assert svc.partition_now() == {frozenset({"crm:1", "res:R1"})}


def test_changed_record_that_no_longer_matches_splits_off_and_the_founder_keeps_the_id(svc):
    svc.ingest(crm1(), "e1")
    svc.ingest(bill1(), "e2")
    ev = svc.ingest(party("billing", "A1", "广州市远洋物流有限公司", uscc=U2, city="广州"), "e3")
    assert svc.partition_now() == {frozenset({"crm:1"}), frozenset({"billing:A1"})}
    assert svc.xref("crm", "1")["golden_id"] == "G0000000001"
    assert {e.payload["golden_id"]: e.payload["change"] for e in ev} == {"G0000000001": "unmerged",
                                                                         "G0000000002": "unmerged"}


def test_golden_ids_are_stable_across_rematch(svc):
    svc.ingest(crm1(), "e1")
    svc.ingest(other_company(), "e2")
    svc.ingest(bill1(), "e3")
    before = svc.snapshot()
    assert svc.rematch() == []
    assert svc.snapshot() == before


@BOTH
def test_a_steward_override_wins_over_later_source_changes_until_it_is_removed(svc):
    svc.ingest(crm1(), "e1")
    svc.ingest(bill1(), "e2")
    ev = svc.override("G0000000001", "name", "华信科技集团有限公司", by="erin", reason="registry")
    assert kinds(ev) == [("party.golden.updated.v1", "G0000000001", 3)]
    won = {"value": "华信科技集团有限公司", "lineage": {"source_system": "steward", "source_id": None, "rule": "override"}}
    assert svc.get_customer("G0000000001")["attributes"]["name"] == won
    # the engine's changes later: the override still wins (a new phone, then a new name at the source)
    svc.ingest(crm1_phone("0755-12345678"), "e3")
    svc.ingest(party("crm", "1", "深圳华信科技股份有限公司", uscc=U1, phones=["0755-12345678"], city="深圳"), "e4")
    c = svc.get_customer("G0000000001")
    assert c["attributes"]["name"] == won and c["attributes"]["phones"]["value"][0] == "+8675512345678"
    svc.override("G0000000001", "name", None, by="erin", reason="wrong")
    assert svc.get_customer("G0000000001")["attributes"]["name"]["lineage"]["rule"] != "override"
    assert [(a["action"], a["actor"], a["target"]) for a in svc.audit()][:2] == [
        ("override", "erin", "G0000000001.name"), ("override", "erin", "G0000000001.name")]


def test_an_override_its_rule_does_not_let_win_fills_in_once_no_source_has_the_attribute(url):
    from esbhub.mdm.service import MdmSettings
    from esbhub.mdm.survivorship import AttributeRule, SurvivorshipConfig

    cfg = SurvivorshipConfig(attributes={"industry": AttributeRule(rules=["trust", "recency"])})
    svc = MdmService(url, settings=MdmSettings(survivorship=cfg))
    svc.ingest(bill1(attributes={"billing_account": "BA1", "industry": "制造"}), "e1")
    svc.override("G0000000001", "industry", "金融", by="erin")
    assert svc.get_customer("G0000000001")["attributes"]["industry"]["value"] == "制造"  # the source wins
    svc.ingest(bill1(attributes={"billing_account": "BA1"}), "e2")  # the engine's change: no source has it now
    assert svc.get_customer("G0000000001")["attributes"]["industry"]["value"] == "金融"


@BOTH
def test_as_of_returns_the_version_valid_at_that_time(svc):
    svc.ingest(crm1(), "e1")
    t1 = datetime.now(UTC)
    time.sleep(0.01)  # distinct timestamps for the two versions, not a wait for a condition
    svc.ingest(bill1(), "e2")
    assert svc.as_of("G0000000001", t1)["source_keys"] == ["crm:1"]
    assert svc.as_of("G0000000001", datetime.now(UTC))["source_keys"] == ["billing:A1", "crm:1"]
    assert svc.as_of("G0000000001", datetime(2000, 1, 1, tzinfo=UTC)) is None


def test_events_carry_a_gapless_sequence_per_golden_id(svc):
    seen: dict[str, list[int]] = {}
    for i, p in enumerate([crm1(), other_company(), bill1(), crm1(status="suspended")]):
        for e in svc.ingest(p, f"e{i}"):
            assert e.headers["golden_seq"] == str(e.payload["seq"])
            seen.setdefault(e.payload["golden_id"], []).append(e.payload["seq"])
    for e in svc.ingest(party("res", "R5", "华信云计算有限公司", city="北京"), "e9") + svc.merge(
        "G0000000001", "res:R5", by="x"
    ):
        seen.setdefault(e.payload["golden_id"], []).append(e.payload["seq"])
    for gid, seqs in seen.items():
        assert seqs == list(range(1, len(seqs) + 1)), gid


@BOTH
def test_failed_ingest_rolls_back_the_database_and_the_matcher_index(svc, monkeypatch):
    svc.ingest(crm1(), "e1")
    before, n = svc.snapshot(), len(svc.matcher)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(svc, "_open_tasks", boom)
    with pytest.raises(RuntimeError):
        svc.ingest(bill1(), "e2")
    assert svc.snapshot() == before and len(svc.matcher) == n
    monkeypatch.undo()
    assert kinds(svc.ingest(bill1(), "e2")) == [("party.golden.updated.v1", "G0000000001", 2)]


@BOTH
def test_a_restarted_service_rebuilds_its_index_from_the_store(svc, url):
    svc.ingest(crm1(), "e1")
    again = MdmService(url)
    again.ingest(bill1(), "e2")
    assert again.partition_now() == {frozenset({"crm:1", "billing:A1"})}


def test_search_finds_customers_by_fuzzy_name_uscc_phone_and_source_key(svc):
    svc.ingest(crm1(), "e1")
    svc.ingest(other_company(), "e2")
    assert svc.search("华信科枝")[0]["golden_id"] == "G0000000001"
    assert svc.search(U2)[0]["golden_id"] == "G0000000002"
    assert svc.search("0755 8888 6666")[0]["golden_id"] == "G0000000001"
    assert svc.search("crm:9")[0]["golden_id"] == "G0000000002"


@contextlib.contextmanager
def _whole_golden_reads(url: str) -> Iterator[list[str]]:
    """Statements run meanwhile that read ``mdm_golden`` other than by golden id or by what changed
    (golden history ids): reads of every golden record."""
    import re

    from esbhub.db import engine_for

    whole: list[str] = []
    keyed = ("mdm_golden.golden_id =", "mdm_golden.golden_id in", "mdm_golden_history.id >")

    def seen(conn, cursor, statement, parameters, context, executemany):
        text = " ".join(statement.lower().split())
        if re.search(r"\bmdm_golden\b(?!_)", text) and not any(k in text for k in keyed):
            whole.append(statement)

    eng = engine_for(url)
    sa.event.listen(eng, "before_cursor_execute", seen)
    try:
        yield whole
    finally:
        sa.event.remove(eng, "before_cursor_execute", seen)


@BOTH
def test_a_search_after_a_change_sees_it_without_reloading_every_golden_record(svc, url):
    svc.ingest(crm1(), "e1")
    svc.ingest(other_company(), "e2")
    assert svc.search("远洋物流")[0]["golden_id"] == "G0000000002"
    svc.ingest(party("crm", "9", "广州市远航物流有限公司", uscc=U2, phones=["020-33334444"], city="广州"), "e3")  # renamed
    svc.ingest(party("erp", "5", "杭州市青松餐饮管理有限公司", phones=["0571-66667777"], city="杭州"), "e4")  # new
    with _whole_golden_reads(url) as whole:
        assert [(r["golden_id"], r["matched_on"], r["score"]) for r in svc.search("远航物流")][:1] == [
            ("G0000000002", "core_name", 100.0)]
        assert svc.search("广州市远洋物流有限公司")[0]["score"] < 100  # its old name is gone
        assert svc.search("青松餐饮")[0]["source_keys"] == ["erp:5"]
    assert whole == []


@BOTH
def test_search_by_phone_finds_the_record_whatever_way_the_number_is_written(svc):
    svc.ingest(crm1(), "e1")  # 0755-88886666, in 深圳
    svc.ingest(party("crm", "2", "杭州市青松餐饮管理有限公司", phones=["139 1234 5678"], city="杭州"), "e2")
    for written in ("0755-88886666", "(0755) 8888-6666", "+86 755 8888 6666", "0086 755 88886666", "075588886666",
                    "8888 6666", "88886666"):
        got = svc.search(written)
        assert [(r["golden_id"], r["matched_on"]) for r in got] == [("G0000000001", "phone")], written
    for written in ("13912345678", "+86-139-1234-5678", "139.1234.5678", "(+86) 139 1234 5678"):
        assert [r["source_keys"] for r in svc.search(written)] == [["crm:2"]], written
    assert svc.search("0755-88886667") == []


_SAME_NAME_CITIES = ["深圳", "广州", "北京", "上海", "杭州", "南京", "武汉", "成都", "西安", "重庆", "天津", "苏州"]


def _same_name_in_twelve_cities(svc) -> None:
    """Twelve companies of one 字号 (distinct USCCs: never merged), then the first four changed: on
    PostgreSQL their golden rows move behind the others in the table."""
    for i, city in enumerate(_SAME_NAME_CITIES):
        svc.ingest(party("crm", str(i), f"{city}市华信科技有限公司", uscc=uscc(100 + i), phones=[f"0755-8000{i:04d}"],
                         city=city), f"e{i}")
    for i in range(4):
        svc.ingest(party("crm", str(i), f"{_SAME_NAME_CITIES[i]}市华信科技有限公司", uscc=uscc(100 + i),
                         phones=[f"0755-9000{i:04d}"], city=_SAME_NAME_CITIES[i]), f"u{i}")


@pytest.mark.postgres
def test_search_answers_the_same_on_sqlite_and_postgresql(tmp_path, pg_url, unique):
    """Ties (one 字号 in twelve cities) are broken by golden id on both, whatever order the
    database hands the rows back in."""
    from mdm.fakes import fresh_pg_db

    pg, drop = fresh_pg_db(pg_url, "mdm_" + unique)
    try:
        answers = []
        for url in (f"sqlite:///{tmp_path / 'mdm.db'}", pg):
            svc = MdmService(url)
            _same_name_in_twelve_cities(svc)
            answers.append([svc.search(q, limit=limit) for q in ("华信科技", "华信科枝", "深圳华信", "杭州市华信科技有限公司",
                                                                 "0755-80000005", uscc(107), "crm:3")
                            for limit in (3, 20)])
        assert answers[0] == answers[1]
        assert [r["golden_id"] for r in answers[0][0]] == ["G0000000001", "G0000000002", "G0000000003"]
    finally:
        drop()


_OTHER_PROCESS = """
import sys
from esbhub.mdm.service import MdmService
from esbhub.schemas.party import Party

svc = MdmService(sys.argv[1], migrate=False)
svc.ingest(Party(source_system="erp", source_id="77", name="杭州市远景物流有限公司", city="杭州",
                 phones=[{"number": "0571-66667777"}]), "other-process-1")
"""


@BOTH
def test_a_search_finds_what_another_process_committed(svc, url):
    import os
    import subprocess
    import sys

    svc.ingest(crm1(), "e1")
    assert svc.search("远景物流") == []
    subprocess.run([sys.executable, "-c", _OTHER_PROCESS, url], check=True, env=dict(os.environ), timeout=120)
    with _whole_golden_reads(url) as whole:
        assert [r["source_keys"] for r in svc.search("远景物流")][:1] == [["erp:77"]]
        assert [r["source_keys"] for r in svc.search("0571 6666 7777")] == [["erp:77"]]
    assert whole == []


def test_items_linked_by_source_key_or_golden_id_show_in_the_360_view_after_a_merge(svc):
    svc.ingest(crm1(), "e1")
    svc.ingest(unregistered_company(), "e2")
    svc.link("bill", "BILL-1", {"amount": "10.00"}, source=("crm", "9"))
    svc.link("alarm", "ALM-1", {"circuit": "C1"}, golden_id="G0000000002")
    svc.merge("G0000000001", "G0000000002", by="x")
    linked = svc.get_customer("G0000000001")["linked"]
    assert [i["ref"] for i in linked["bill"]] == ["BILL-1"] and [i["ref"] for i in linked["alarm"]] == ["ALM-1"]


def test_deleted_source_record_stays_in_its_golden_record_but_loses_its_say(svc):
    svc.ingest(crm1(), "e1")
    svc.ingest(bill1(), "e2")
    svc.ingest(bill1(deleted=True, attributes={"billing_account": "BA9"}), "e3")
    c = svc.get_customer("G0000000001")
    assert c["status"] == "active" and "billing_account" not in c["attributes"]
    with svc.Session() as s:
        assert s.get(Xref, ("billing", "A1")).deleted
        assert s.execute(sa.select(sa.func.count()).select_from(Golden)).scalar() == 1
        assert s.execute(sa.select(sa.func.count()).select_from(Link)).scalar() >= 1


def test_a_second_service_on_the_same_database_sees_the_records_the_first_one_ingested(svc, url):
    other = MdmService(url)  # e.g. `esbhub mdm load` in another process beside the worker
    other.ingest(crm1(), "e1")
    svc.ingest(bill1(), "e2")
    assert svc.partition_now() == {frozenset({"crm:1", "billing:A1"})}


class _Recording(Matcher):
    """The engine's matcher, remembering the last record indexed under each key."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, object] = {}

    def add(self, key, rec) -> None:
        self.last[key] = rec
        super().add(key, rec)


def crm1_phone(phone: str):
    return party("crm", "1", "深圳市华信科技有限公司", uscc=U1, phones=[phone], city="深圳",
                 address="广东省深圳市南山区科技园路1号")


def test_the_same_record_twice_in_one_batch_stays_indexed_at_its_newer_version_after_the_next_catch_up(url):
    svc = MdmService(url, matcher=_Recording())
    svc.ingest_many([(crm1(), "e1", None), (crm1_phone("0755-12345678"), "e2", None)])
    svc.ingest(other_company(), "e3")  # its transaction first looks out for versions committed since
    assert svc.matcher.last["crm:1"].phones == ["+8675512345678"]


@BOTH
def test_a_service_indexes_another_service_s_newer_version_of_a_record_it_wrote_itself(url):
    svc, other = MdmService(url, matcher=_Recording()), MdmService(url)
    svc.ingest(crm1(), "e1")
    other.ingest(crm1_phone("0755-12345678"), "e2")
    svc.ingest(other_company(), "e3")
    assert svc.matcher.last["crm:1"].phones == ["+8675512345678"]
    svc.ingest(crm1_phone("0755-22223333"), "e4")  # and its own version after that one
    other.ingest(other_company(), "e5")
    svc.ingest(bill1(), "e6")
    assert svc.matcher.last["crm:1"].phones == ["+8675522223333"]


def test_a_change_that_does_not_move_the_score_keeps_its_link_and_one_that_does_supersedes_it(svc):
    svc.ingest(crm1(), "e1")
    svc.ingest(bill1(), "e2")

    def links():
        with svc.Session() as s:
            return s.execute(sa.select(Link.id, Link.active, Link.weight).order_by(Link.id)).all()

    first = links()
    assert [(a, w) for _i, a, w in first] == [(True, first[0].weight)]
    svc.ingest(bill1(status="suspended"), "e3")  # status is not compared: same score, same evidence
    assert links() == first
    moved = party("billing", "A1", "华信科技(深圳)有限责任公司", uscc=U1, phones=["0755-11112222"], city="深圳",
                  attributes={"billing_account": "BA1", "monthly_revenue": "1200000"})
    svc.ingest(moved, "e4")  # the phones differ now: a new score
    after = links()
    assert [(i, a) for i, a, _w in after[:1]] == [(first[0].id, False)]
    assert len(after) == 2 and after[1].active and after[1].weight != first[0].weight
    assert svc.partition_now() == {frozenset({"crm:1", "billing:A1"})}


def test_the_loaded_matcher_index_is_kept_out_of_the_cyclic_garbage_collector(url):
    import gc

    MdmService(url).ingest(crm1(), "e1")
    gc.unfreeze()
    restarted = MdmService(url)
    assert gc.get_freeze_count() == 0
    restarted.ingest(bill1(), "e2")  # first use loads the index, then parks it in the permanent generation
    assert gc.get_freeze_count() > 0
    assert any(obj is restarted.matcher for obj in gc.get_objects()) is False  # frozen objects are not tracked
    gc.unfreeze()


def test_a_process_loading_the_matcher_index_collects_garbage_less_often_unless_it_chose_thresholds(url):
    import gc

    from esbhub.mdm.service import GC_THRESHOLDS

    MdmService(url).ingest(crm1(), "e1")
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)  # the interpreter's defaults
        MdmService(url).ingest(bill1(), "e2")  # first use loads the index
        assert gc.get_threshold() == GC_THRESHOLDS
        gc.set_threshold(2000, 5, 5)  # the process chose its own: left alone
        MdmService(url).ingest(party("crm", "3", "其他科技有限公司"), "e3")
        assert gc.get_threshold() == (2000, 5, 5)
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_look_up_keys_follow_the_current_version_of_a_source_record(svc):
    from esbhub.mdm.store import KeyIndex

    def phones():
        with svc.Session() as s:
            return s.execute(sa.select(KeyIndex.value).where(KeyIndex.kind == "phone", KeyIndex.source_id == "1")).scalars().all()

    svc.ingest(crm1(), "e1")
    first = phones()
    assert len(first) == 1 and first[0].endswith("88886666")
    svc.ingest(crm1(status="suspended"), "e2")  # no look-up key changed
    assert phones() == first
    svc.ingest(party("crm", "1", "深圳市华信科技有限公司", uscc=U1, phones=["0755-11112222"], city="深圳"), "e3")
    assert [p[-8:] for p in phones()] == ["11112222"]
    assert svc.search("0755-11112222")[0]["source_keys"] == ["crm:1"]
    assert svc.search("0755-88886666") == [] or svc.search("0755-88886666")[0]["matched_on"] != "phone"


def test_both_sides_of_a_link_changed_in_one_batch_leave_one_link_scored_on_both_new_versions(url):
    """The second record sees (and supersedes) the link the first one wrote against its previous
    version in the same transaction — the same active links as when the two changes arrive one at
    a time, not two active links for one pair."""

    def changed_pair():
        a = party("crm", "1", "深圳市华信科技有限公司", uscc=U1, phones=["0755-11112222"], city="深圳",
                  address="广东省深圳市南山区科技园路1号")
        b = party("billing", "A1", "华信科技(深圳)有限责任公司", uscc=U1, phones=["0755-11112222"], city="深圳",
                  attributes={"billing_account": "BA1", "monthly_revenue": "1200000"})
        return a, b

    def active_links(svc):
        with svc.Session() as s:
            return sorted(s.execute(sa.select(Link.a_key, Link.b_key, Link.weight, Link.decision)
                                    .where(Link.active.is_(True))).all())

    batched, single = MdmService(url), MdmService(url.replace(".db", "-single.db"))
    for svc in (batched, single):
        svc.ingest_many([(crm1(), "e1", None), (bill1(), "e2", None)])
    a, b = changed_pair()  # both change their phone: the pair's score moves
    batched.ingest_many([(a, "e3", None), (b, "e4", None)])
    single.ingest(a, "e3")
    single.ingest(b, "e4")
    got = active_links(batched)
    assert len(got) == 1
    assert got == active_links(single)
    assert batched.partition_now() == single.partition_now() == {frozenset({"crm:1", "billing:A1"})}


def test_a_stored_record_changed_twice_in_one_batch_is_stored_as_its_last_version(url):
    """Staging writes a stored xref row itself (Core, the columns that changed), also when the same
    key comes again later in the batch: the row, its look-up keys and the golden record end as
    when the versions arrive one transaction each."""

    def row(svc):
        with svc.Session() as s:
            x = s.get(Xref, ("crm", "1"))
            return (x.version, x.content_hash, x.name, x.core_name, x.uscc, x.raw, x.std, x.deleted)

    batched, single = MdmService(url), MdmService(url.replace(".db", "-single.db"))
    v2 = party("crm", "1", "深圳市华信科技有限公司", uscc=U1, phones=["0755-11112222"], city="深圳",
               address="广东省深圳市南山区科技园路1号")
    v3 = party("crm", "1", "深圳市华信信息技术有限公司", uscc=U1, phones=["0755-11112222"], city="深圳",
               emails=["it@huaxin.cn"])
    for svc in (batched, single):
        svc.ingest_many([(crm1(), "e1", None), (bill1(), "e2", None)])
    batched.ingest_many([(v2, "e3", None), (other_company(), "e4", None), (v3, "e5", None)])
    for p, e in ((v2, "e3"), (other_company(), "e4"), (v3, "e5")):
        single.ingest(p, e)
    assert row(batched) == row(single)
    assert row(batched)[:3] == (3, row(single)[1], "深圳市华信信息技术有限公司")
    assert batched.search("0755-11112222")[0]["source_keys"] == single.search("0755-11112222")[0]["source_keys"]
    assert batched.partition_now() == single.partition_now()


AGENT = "0755-86001234"  # an agent's number, given as the contact of ten companies
_AGENT_CLIENTS = ["深圳市远景物流有限公司", "深圳市金石建材有限公司", "深圳市青松餐饮管理有限公司", "深圳市博雅教育咨询有限公司",
                  "深圳市恒通汽车服务有限公司", "深圳市百川贸易有限公司", "深圳市星辰广告有限公司", "深圳市绿洲园林工程有限公司"]


def agent_clients(phone: str = AGENT) -> tuple:
    """Two companies one character apart and eight others, all giving the same phone number."""
    a = party("crm", "1", "深圳市宏达电子有限公司", phones=[AGENT], city="深圳")
    b = party("billing", "1", "深圳市宏大电子有限公司", phones=[AGENT], city="深圳")
    return a, b, [party("crm", str(10 + i), n, phones=[phone], city="深圳") for i, n in enumerate(_AGENT_CLIENTS)]


def store_state(svc: MdmService) -> tuple:
    with svc.Session() as s:
        links = sorted((lk.a_key, lk.b_key, lk.decision, lk.weight)
                       for lk in s.execute(sa.select(Link).where(Link.active.is_(True))).scalars())
    return svc.partition_now(), links


def test_a_number_on_more_records_than_the_generic_limit_counts_as_generic_whatever_the_arrival_order(tmp_path):
    a, b, others = agent_clients()
    early = MdmService(f"sqlite:///{tmp_path / 'early.db'}")
    for p in [a, b, *others]:  # the pair's link is scored while the number looks specific
        early.ingest(p, f"{p.source_system}-{p.source_id}")
    late = MdmService(f"sqlite:///{tmp_path / 'late.db'}")
    for p in [*others, a, b]:
        late.ingest(p, f"{p.source_system}-{p.source_id}")
    assert store_state(early) == store_state(late)
    partition, links = store_state(early)
    assert frozenset({"crm:1", "billing:1"}) not in partition  # names one character apart and an agent's phone
    assert [lk[2] for lk in links if lk[:2] == ("billing:1", "crm:1")] == ["review"]


def test_a_number_that_stops_being_generic_counts_as_specific_again_for_the_pairs_scored_meanwhile(tmp_path):
    a, b, others = agent_clients()
    svc = MdmService(f"sqlite:///{tmp_path / 'svc.db'}")
    for p in [*others, a, b]:
        svc.ingest(p, f"{p.source_system}-{p.source_id}")
    assert frozenset({"crm:1", "billing:1"}) not in svc.partition_now()
    moved = [party(p.source_system, p.source_id, p.name, phones=["0755-26669999"], city="深圳") for p in others[:2]]
    for p in moved:  # two clients leave the agent: eight records hold the number now
        svc.ingest(p, f"{p.source_system}-{p.source_id}-v2")
    fresh = MdmService(f"sqlite:///{tmp_path / 'fresh.db'}")
    for p in [a, b, *moved, *others[2:]]:
        fresh.ingest(p, f"{p.source_system}-{p.source_id}")
    assert store_state(svc) == store_state(fresh)
    assert frozenset({"crm:1", "billing:1"}) in svc.partition_now()


# ------------------------------------------------------------ the hub's mdm settings, end to end
def hub_settings(tmp_path, name: str, mdm_yaml: str = ""):
    """Hub settings as `esbhub --config` loads them: a YAML file, its own data dir (and database)."""
    from esbhub.config import Settings

    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(f"data_dir: {tmp_path / name}\n{mdm_yaml}", encoding="utf-8")
    return Settings.load(cfg)


def test_a_customer_ingested_through_service_for_gets_the_tier_of_the_configured_thresholds(tmp_path):
    from esbhub.mdm.service import service_for

    tiers = "mdm:\n  tiering:\n    thresholds: {gold: 1000000, silver: 30000}\n    below: bronze\n"
    configured = service_for(hub_settings(tmp_path, "tiered", tiers))
    default = service_for(hub_settings(tmp_path, "default"))
    for svc in (configured, default):
        svc.ingest(bill1(attributes={"billing_account": "BA1", "monthly_revenue": "50000"}), "e1")
        svc.ingest(other_company(), "e2")  # no revenue
    assert [configured.golden(g)["tier"] for g in ("G0000000001", "G0000000002")] == ["silver", "bronze"]
    assert [default.golden(g)["tier"] for g in ("G0000000001", "G0000000002")] == ["C", "D"]
    assert configured.get_customer("G0000000001")["group_tier"] == "silver"


def test_configured_source_trust_for_one_attribute_changes_which_source_s_value_survives(tmp_path):
    from esbhub.mdm.service import service_for

    trust = "mdm:\n  survivorship:\n    attributes:\n      account_manager: {trust: {billing: 100, '*': 10}}\n"
    configured = service_for(hub_settings(tmp_path, "trusted", trust))
    default = service_for(hub_settings(tmp_path, "default"))
    for svc in (configured, default):
        svc.ingest(crm1(attributes={"account_manager": "王经理"}), "e1")
        svc.ingest(bill1(attributes={"billing_account": "BA1", "account_manager": "系统", "monthly_revenue": "5"}), "e2")
    got = configured.get_customer("G0000000001")["attributes"]
    assert default.get_customer("G0000000001")["attributes"]["account_manager"]["value"] == "王经理"  # CRM first
    assert got["account_manager"]["value"] == "系统" and got["account_manager"]["lineage"]["rule"] == "trust"
    # the attributes the config does not name keep their defaults
    assert got["billing_account"]["lineage"]["source_system"] == "billing"
    assert got["phones"] == default.get_customer("G0000000001")["attributes"]["phones"]


def test_service_for_keeps_one_service_per_database_and_mdm_settings_whoever_asks_first(tmp_path):
    """A sink that built the database's service from other settings must not hand it (its tiers)
    to the consumer configured otherwise; the same settings share one service."""
    from esbhub.config import Settings
    from esbhub.mdm.service import service_for

    first = service_for(Settings(data_dir=tmp_path))
    configured = Settings(data_dir=tmp_path, mdm={"tiering": {"thresholds": {"gold": 1.0}}})
    svc = service_for(configured)
    assert svc is not first and svc.settings.tiering.thresholds == {"gold": 1.0}
    assert service_for(Settings(data_dir=tmp_path, mdm={"tiering": {"thresholds": {"gold": 1.0}}})) is svc


def test_the_match_model_is_the_configured_one_else_the_one_in_the_data_dir(tmp_path):
    from esbhub.config import Settings
    from esbhub.mdm.service import service_for

    assert service_for(Settings(data_dir=tmp_path)).settings.model_path == tmp_path / "mdm_model.json"
    mine = Settings(data_dir=tmp_path, mdm={"model_path": str(tmp_path / "models" / "v2.json")})
    assert service_for(mine).settings.model_path == tmp_path / "models" / "v2.json"


CENTRE = "广东省深圳市南山区科技园路1号"  # a business centre: the registered address of many companies


def centre_tenants() -> list:
    """Two companies one character apart and eight others, all registered at one business centre."""
    names = ["深圳市宏达电子有限公司", "深圳市宏大电子有限公司", *_AGENT_CLIENTS]
    return [party("crm", str(i), n, city="深圳", address=CENTRE, phones=[f"0755-2600{i:04d}"]) for i, n in enumerate(names)]


def test_an_address_many_companies_share_says_nothing_whatever_the_arrival_order(tmp_path):
    tenants = centre_tenants()
    early = MdmService(f"sqlite:///{tmp_path / 'early.db'}")
    for p in tenants:  # the look-alike pair is scored while the centre still looks like one address
        early.ingest(p, f"{p.source_system}-{p.source_id}")
    late = MdmService(f"sqlite:///{tmp_path / 'late.db'}")
    for p in [*tenants[2:], *tenants[:2]]:
        late.ingest(p, f"{p.source_system}-{p.source_id}")
    assert store_state(early) == store_state(late)
    assert frozenset({"crm:0", "crm:1"}) not in early.partition_now()
