"""End to end: the demo's simulators, reference routes, bus and MDM, checked against the ground truth.

One Worker in this process consumes the telecom routes and the MDM on the embedded broker; the
route sources in this process poll the bank's SFTP and billing's FTP peers (in-process servers)
and receive the NMS's SNMP traps;
the simulators' truth says which source records are one company, which postings billing must
receive and which customer each alarm affects.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from esbhub.config import Settings
from esbhub.mdm.service import MdmService
from esbhub.telecom.demo import DemoSummary, run_inprocess


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, DemoSummary]]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("ESBHUB_")}
    mp = pytest.MonkeyPatch()
    data = tmp_path_factory.mktemp("telecom-demo")
    for k in ("ESBHUB_DATABASE_URL", "ESBHUB_BROKER_URL", "ESBHUB_ROUTES_DIR", "ESBHUB_TELECOM_RESOURCE_DB"):
        mp.delenv(k, raising=False)
    mp.setenv("ESBHUB_DATA_DIR", str(data))
    mp.setenv("ESBHUB_LOG_LEVEL", "warning")
    try:
        yield run_inprocess(Settings(data_dir=data, log_level="warning"), n_companies=60, seed=2026, timeout=60)
    finally:
        mp.undo()
        assert {k: v for k, v in os.environ.items() if k.startswith("ESBHUB_")} == saved, "the demo run leaves the environment as it found it"


def test_golden_records_match_the_ground_truth_without_false_merges(outcome: tuple[object, DemoSummary]) -> None:
    _demo, s = outcome
    assert s.source_records > 200 and s.companies > 60
    assert s.false_merges == 0
    assert s.precision >= 0.995
    assert s.recall >= 0.95


def test_every_bank_payment_is_posted_once_with_its_amount(outcome: tuple[object, DemoSummary]) -> None:
    demo, s = outcome
    groups = [p for p in demo.world.payments if p.billing_account in demo.world.groups]  # type: ignore[attr-defined]
    assert groups, "the world holds at least one group payment to apportion"
    assert s.postings_expected == sum(len(p.expected) for p in demo.world.payments)  # type: ignore[attr-defined]
    assert s.postings_expected > s.payments  # group payments became one posting per member account
    assert (s.postings_missing, s.postings_unexpected, s.postings_wrong_amount, s.duplicate_posts) == (0, 0, 0, 0)
    assert s.postings_received == s.postings_expected


def test_bank_file_came_over_sftp_and_bill_file_over_ftp_each_archived_once(outcome: tuple[object, DemoSummary]) -> None:
    demo, s = outcome
    assert s.bank_file_via_sftp and s.bill_file_via_ftp
    for f in (demo.bank_file, demo.bill_file):  # type: ignore[attr-defined]
        assert f is not None and not f.exists()
        assert [p.name for p in (f.parent / "archive").iterdir()] == [f.name]  # archived exactly once, nothing else
        assert not (f.parent / "error").exists()
    assert not (demo.bank_file.parent / f"{demo.bank_file.name}.done").exists()  # type: ignore[attr-defined]
    # the files are on their peers, not in a local outbox the driver parsed itself
    assert demo.bank_file.is_relative_to(demo.sftp.root) and demo.bill_file.is_relative_to(demo.ftp.root)  # type: ignore[attr-defined]


def test_billing_changes_came_over_soap_and_resource_changes_by_sql_polling(outcome: tuple[object, DemoSummary]) -> None:
    demo, s = outcome
    w = demo.world  # type: ignore[attr-defined]
    # billing: every change answered by the hub's SOAP endpoint with its own message id, which the bus delivered
    assert s.billing_changes == len(w.billing) > 20
    assert s.billing_via_soap == s.billing_changes
    assert len(set(demo.billing_accepted.values())) == len(w.billing)  # type: ignore[attr-defined]
    # resource: one outbox row per change, every row taken (processed_at stamped) by the sql source,
    # and the envelope it made of each row (id from table + key) delivered
    assert s.resource_changes == len(w.resource) > 20
    assert len(demo.resource_change_ids) == len(w.resource)  # type: ignore[attr-defined]
    assert s.resource_via_sql == s.resource_changes


def test_payer_is_matched_to_the_billing_customers_golden_record(outcome: tuple[object, DemoSummary]) -> None:
    _demo, s = outcome
    assert s.payer_checked > 20
    assert s.payer_matched / s.payer_checked >= 0.9


def test_every_alarm_is_delivered_with_its_key_customer_and_on_the_360_view(outcome: tuple[object, DemoSummary]) -> None:
    _demo, s = outcome
    assert s.alarms > 10
    assert s.alarms_delivered == s.alarms_with_customer == s.alarms_right_customer == s.alarms_on_360 == s.alarms
    assert s.duplicate_alarms == 0


def test_accounts_services_bills_payments_and_alarms_reach_the_360_view_by_their_source_keys(
        outcome: tuple[object, DemoSummary]) -> None:
    _demo, s = outcome
    assert s.accounts > 20 and s.services > 20 and s.bills > 20 and s.payments > 20 and s.alarms > 10
    assert (s.accounts_on_360, s.services_on_360, s.bills_on_360, s.payments_on_360, s.alarms_on_360) == (
        s.accounts, s.services, s.bills, s.payments, s.alarms)


def test_a_billing_customers_bill_and_payment_show_on_its_360_view_via_their_source_keys(
        outcome: tuple[object, DemoSummary]) -> None:
    demo, _s = outcome
    w = demo.world  # type: ignore[attr-defined]
    svc = MdmService(demo.database_url, migrate=False)  # type: ignore[attr-defined]
    bills = {b["account"]: b for b in w.bills}
    # a payment to a billing customer's own account, by a payer mastered into that customer's golden record
    for p in w.payments:
        cust = w.account_customer.get(p.billing_account)
        if cust and p.billing_account in bills and svc.xref("bank", p.payer_account)["golden_id"] == (
                gid := svc.xref("billing", cust)["golden_id"]):
            break
    else:
        pytest.fail("no payment whose payer is mastered with the billing customer it pays")
    linked = svc.get_customer(gid)["linked"]
    bill = bills[p.billing_account]
    [b] = [i for i in linked["bill"] if i["ref"] == f"{bill['bill_id']}@billing:{cust}"]
    assert b["via"] == f"billing:{cust}" and b["data"]["total"] == bill["total"]
    [pay] = [i for i in linked["payment"] if i["ref"] == f"{p.payment_id}@bank:{p.payer_account}"]
    assert pay["via"] == f"bank:{p.payer_account}" and pay["data"]["amount"] == str(p.amount)


def test_service_orders_end_as_expected_with_compensation_and_nothing_half_done(
        outcome: tuple[object, DemoSummary]) -> None:
    demo, s = outcome
    w = demo.world  # type: ignore[attr-defined]
    assert s.orders == len(w.orders) >= 8
    assert s.orders_as_expected == s.orders
    assert s.orders_completed == sum(o.expected_status == "completed" for o in w.orders) > 0
    assert s.orders_compensated == sum(o.compensated for o in w.orders) > 0
    assert s.orders_inconsistent == 0
    # completed orders report resource_checked, provisioned and completed; failed ones fewer
    assert s.status_events > s.orders


def test_golden_records_are_tiered_from_their_bills(outcome: tuple[object, DemoSummary]) -> None:
    _demo, s = outcome
    assert s.tiers_checked > 20
    assert s.tiers_right == s.tiers_checked


def test_no_dead_letters_and_bus_counts_reconcile(outcome: tuple[object, DemoSummary]) -> None:
    demo, s = outcome
    w = demo.world  # type: ignore[attr-defined]
    assert s.dead_letters == 0
    native = len(w.billing) + len(w.resource) + len(w.bank)
    # every input, every party.v1 a route derived, every bill's customer change and its party.v1,
    # every trap the receiver made and the alarm.v1 derived from it, the bill file's one envelope
    # (per file) and each bill.v1 split from it, each bank file record and the payment.v1 made of it
    assert s.counts["accepted"] == (2 * native + len(w.crm) + 1 + 3 * len(w.bills) + 2 * len(w.payments)
                                    + 2 * len(w.alarms) + len(w.orders))
    c = s.counts
    assert c["in_flight"] == 0 and c["retrying"] == 0 and c["dead_lettered"] == 0
    assert c["accepted"] == c["delivered"] + c["dead_lettered"] + c["filtered"]
    assert s.counts_reconcile
