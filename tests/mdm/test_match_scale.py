"""The matcher's blocking stays bounded as the index grows (the real-time path at 1M records):
huge blocks of common tokens, shared mailboxes and an over-full block cost little, and the true
duplicate is still found through its specific keys."""

from __future__ import annotations

from esbhub.mdm.match import Matcher, MatchModel, blocking_keys
from esbhub.mdm.standardize import codes, standardize
from esbhub.schemas.party import Party

U1 = codes.make_uscc("9", "1", "440305", "MA5DC9X1")


def org(name: str, sid: str, system: str = "crm", **kw):
    return standardize(Party(source_system=system, source_id=sid, name=name, **kw))


def _cjk(i: int) -> str:
    return chr(0x4E00 + 37 * i % 20000) + chr(0x5000 + 53 * i % 15000)


def _with_duplicate(m: Matcher):
    """The query and its true duplicate (same valid USCC, the name spelt another way)."""
    query = org("深圳市华信科技有限公司", "q", uscc=U1, phones=[{"number": "0755-26001234"}])
    m.add("billing:dup", org("华信科技（深圳）有限责任公司", "dup", "billing", uscc=U1))
    return query


def test_a_huge_block_of_a_common_name_prefix_is_not_scanned_and_the_duplicate_is_still_found():
    m = Matcher()
    query = _with_duplicate(m)
    for i in range(300):  # 300 companies in the same city whose names start with the same two characters
        m.add(f"crm:{i}", org(f"深圳市华信{_cjk(i)}有限公司", str(i)))
    weak = next(k for k in blocking_keys(query) if k.startswith("A"))
    assert m.model.max_weak_block_size < len(m.blocks[hash(weak)]) <= m.model.max_block_size
    cands = m.candidates(query)
    assert "billing:dup" in cands and len(cands) < 20
    [best, *_] = m.match("crm:q", query)
    assert best.b == "billing:dup" and best.decision == "match"


def test_a_mailbox_shared_by_many_records_is_not_a_blocking_key():
    m = Matcher()
    query = _with_duplicate(m)
    for i in range(100):
        m.add(f"crm:{i}", org(f"北京市{_cjk(i)}贸易有限公司", str(i), emails=["admin@163.com"]))
    query = query.model_copy(update={"emails": ["admin@163.com"]})
    assert m.candidates(query) == ["billing:dup"]


def test_over_the_scan_budget_the_most_specific_blocks_are_kept():
    m = Matcher(MatchModel(max_block_scan=50, max_weak_block_size=1000))
    query = _with_duplicate(m)
    for i in range(120):
        m.add(f"crm:{i}", org(f"深圳市华信{_cjk(i)}有限公司", str(i)))
    assert m.candidates(query) == ["billing:dup"]  # the 120-record block is over the budget, the USCC's is not


def test_a_block_past_the_hard_cap_stops_keeping_members_and_records_still_come_and_go():
    model = MatchModel(max_block_size=10)
    m = Matcher(model)
    for i in range(60):  # the same trade name in 60 cities: one core-name block of 60 > 4 × 10
        m.add(f"crm:{i}", org(f"华信科技有限公司{_cjk(i)}分公司", str(i), uscc=codes.make_uscc("9", "1", "440305", f"MA{i:06d}")))
    core = next(k for k in blocking_keys(m.records["crm:0"]) if k.startswith("C"))
    assert m.blocks[hash(core)] == []  # not 60 keys kept for a value that can never be used
    for i in range(55):
        m.remove(f"crm:{i}")
    assert len(m) == 5 and all(f"crm:{i}" not in ks for ks in m.blocks.values() for i in range(55))
    again = m.records["crm:59"]
    assert m.candidates(again) == ["crm:59"]  # found through its own specific keys (USCC), not the core name
