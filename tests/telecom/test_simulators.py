"""The simulators: deterministic by seed, files in the banks' and billing's encodings read back exactly."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from esbhub.telecom import sims
from esbhub.telecom.world import apportion, build


def test_world_is_deterministic_by_seed_and_differs_across_seeds() -> None:
    a, b, c = build(30, seed=5), build(30, seed=5), build(30, seed=6)
    assert a.truth == b.truth and [p.payment_id for p in a.payments] == [p.payment_id for p in b.payments]
    assert [x.model_dump() for x in a.parties] == [x.model_dump() for x in b.parties]
    assert a.truth != c.truth


def test_world_truth_links_payments_alarms_and_accounts_to_real_companies() -> None:
    w = build(40, seed=11)
    assert w.groups and all(sum(s.values()) == 1 for s in w.groups.values())
    for p in w.payments:
        assert w.truth[f"bank:{p.payer_account}"] == p.entity_id
        assert sum(p.expected.values()) == p.amount
    for a in w.alarms:
        assert w.circuits[a.circuit_id] == a.resource_customer
        assert w.truth[f"resource:{a.resource_customer}"] == a.entity_id


def test_bank_file_is_gb18030_fixed_width_and_reads_back_every_payment(tmp_path: Path) -> None:
    w = build(40, seed=3)
    path = sims.write_bank_file(w, tmp_path)
    raw = path.read_bytes()
    assert any(b >= 0x80 for b in raw)  # Chinese payer names, as GB18030 bytes
    raw.decode("gb18030")
    recs = sims.read_bank_file(path)
    assert [r["payment_id"] for r in recs] == [p.payment_id for p in w.payments]
    for r, p in zip(recs, w.payments, strict=True):
        pay = sims.payment_payload(r)
        assert Decimal(pay["amount"]) == p.amount and pay["payer_name"] == p.payer_name
        assert pay["payer_account"] == p.payer_account and pay["billing_account"] == p.billing_account
        assert pay["paid_at"].endswith("+08:00")


def test_bill_file_is_gbk_and_reads_back_every_bill_with_its_total(tmp_path: Path) -> None:
    w = build(40, seed=3)
    bills = sims.read_bill_file(sims.write_bill_file(w, tmp_path))
    assert {b["bill_id"]: Decimal(b["total"]) for b in bills} == {b["bill_id"]: Decimal(b["total"]) for b in w.bills}


@given(st.decimals(min_value=Decimal("0.01"), max_value=Decimal("10000000"), places=2),
       st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=5))
def test_apportioning_splits_to_the_cent_and_loses_nothing(amount: Decimal, weights: list[int]) -> None:
    shares = {f"BA{i}": Decimal(wt) for i, wt in enumerate(weights)}
    parts = apportion(amount, shares)
    assert sum(parts.values()) == amount
    assert all(v == v.quantize(Decimal("0.01")) for v in parts.values())
