"""The telecom world: one ground truth shared by every simulator.

Built on :func:`esbhub.mdm.synth.generate` (Chinese enterprises with realistic noise, hard
negatives, ground truth), then given what each telecom system holds:

* **billing** — the synth ``billing`` records as the billing system's customer rows (its own
  field names), each with a billing account and a monthly bill for ``period``; a few
  **group agreements** (a group account paid at one point, apportioned to member accounts
  by shares);
* **resource inventory** — the synth ``resource`` records as customer rows, their circuits
  and one service instance per circuit;
* **bank** — the synth ``bank`` records as the bank's payer registry (keyed by the payer's
  bank account number) and one payment per billing account of a company that also banks
  with us, plus one payment per group agreement;
* **CRM** — the synth ``crm`` records, pushed as ``party.v1``;
* **network management** — circuit-down alarms on circuits of key customers.

Everything is deterministic for ``(n_companies, seed)``. The truth maps every source key
(``system:id``) to its real company (``entity_id``), every payment to the accounts and
amounts billing must receive, and every alarm to the resource customer it affects.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

from esbhub.mdm import synth
from esbhub.schemas.party import Party

PERIOD = "2026-10"
CENT = Decimal("0.01")


@dataclass
class Payment:
    payment_id: str
    bank: str
    payer_name: str
    payer_account: str
    billing_account: str
    amount: Decimal
    paid_at: datetime
    entity_id: str
    expected: dict[str, Decimal]  # billing account -> amount billing must receive


@dataclass
class Alarm:
    alarm_id: str
    circuit_id: str
    source_address: str
    raised_at: datetime
    resource_customer: str  # resource customer code holding the circuit
    entity_id: str


@dataclass
class Order:
    payload: dict[str, Any]  # service_order.v1
    expected_status: str  # completed / failed
    expected_reason: str | None  # text the failure reason contains
    compensated: bool = False  # provisioning done, then cancelled because billing refused


@dataclass
class TelecomWorld:
    """What every simulated system holds, and the truth behind it."""

    seed: int
    dataset: synth.SynthDataset
    billing: list[Party]
    resource: list[Party]
    bank: list[Party]  # source_id = the payer's bank account number
    crm: list[Party]
    bills: list[dict[str, Any]]
    groups: dict[str, dict[str, Decimal]]  # group account -> {member account: share}
    payments: list[Payment]
    alarms: list[Alarm]
    orders: list[Order] = field(default_factory=list)
    circuits: dict[str, str] = field(default_factory=dict)  # circuit id -> resource customer code
    truth: dict[str, str] = field(default_factory=dict)  # "system:id" -> entity id
    account_entity: dict[str, str] = field(default_factory=dict)  # billing account -> entity id
    account_customer: dict[str, str] = field(default_factory=dict)  # billing account -> billing customer id

    @property
    def parties(self) -> list[Party]:
        return self.billing + self.resource + self.bank + self.crm

    def expected_postings(self) -> dict[tuple[str, str], Decimal]:
        """(payment id, billing account) → amount, for every posting billing must receive."""
        return {(p.payment_id, acct): amt for p in self.payments for acct, amt in p.expected.items()}

    def customers_account(self, key: str) -> str | None:
        """Billing account of a billing source key (``billing:<cust_id>``)."""
        sid = key.partition(":")[2]
        return next((a for a, c in self.account_customer.items() if c == sid), None)

    def expected_revenue(self) -> dict[str, Decimal]:
        """Billing account → revenue of ``PERIOD`` (bill totals)."""
        return {b["account"]: Decimal(b["total"]) for b in self.bills}


def apportion(amount: Decimal, shares: dict[str, Decimal]) -> dict[str, Decimal]:
    """Split ``amount`` by ``shares`` to the cent; the remainder goes to the last account (sorted)."""
    accts = sorted(shares)
    total_share = sum(shares.values())
    out: dict[str, Decimal] = {}
    for a in accts[:-1]:
        out[a] = (amount * shares[a] / total_share).quantize(CENT, rounding=ROUND_DOWN)
    out[accts[-1]] = amount - sum(out.values())
    return out


def build(n_companies: int = 120, seed: int = 2026) -> TelecomWorld:
    ds = synth.generate(n_companies, seed=seed)
    rng = random.Random(seed * 7919 + 1)
    by_sys: dict[str, list[Party]] = {s: [] for s in synth.SYSTEMS}
    truth: dict[str, str] = {}
    bank_rename: dict[str, str] = {}
    for p in ds.records:
        eid = ds.truth[ds.key(p)]
        if p.source_system == "bank":
            # the bank knows its payers by their account number
            acct = p.attributes.bank_account or p.source_id
            bank_rename[p.source_id] = acct
            p = p.model_copy(update={"source_id": acct})
        by_sys[p.source_system].append(p)
        truth[f"{p.source_system}:{p.source_id}"] = eid
    # parent ids of bank branches point at the renamed head record
    by_sys["bank"] = [
        p.model_copy(update={"parent_source_id": bank_rename.get(p.parent_source_id, p.parent_source_id)})
        if p.parent_source_id else p
        for p in by_sys["bank"]
    ]
    entity_of = truth

    # billing: one account per billing customer; a bill of PERIOD with items per charged service
    bills: list[dict[str, Any]] = []
    account_entity: dict[str, str] = {}
    account_customer: dict[str, str] = {}
    for p in by_sys["billing"]:
        acct = p.attributes.billing_account or f"BA-{p.source_id}"
        rev = Decimal(p.attributes.monthly_revenue or 0).quantize(CENT)
        account_entity[acct] = entity_of[f"billing:{p.source_id}"]
        account_customer[acct] = p.source_id
        if rev <= 0:
            continue
        line = (rev * Decimal("0.6")).quantize(CENT)
        bills.append({
            "bill_id": f"B{PERIOD.replace('-', '')}-{acct}", "account": acct, "customer_source_id": p.source_id,
            "period": PERIOD, "issued_on": f"{PERIOD}-28", "total": str(rev),
            "items": [{"code": "MPLS-VPN", "amount": str(line)}, {"code": "DIA", "amount": str(rev - line)}],
        })

    # payments: companies holding both a billing account and a bank account
    bank_of_entity: dict[str, Party] = {}
    for p in by_sys["bank"]:
        bank_of_entity.setdefault(entity_of[f"bank:{p.source_id}"], p)
    payers = [(acct, bank_of_entity[eid]) for acct, eid in sorted(account_entity.items()) if eid in bank_of_entity]
    bank_codes = {"中国工商银行": "ICBC", "中国建设银行": "CCB", "招商银行": "CMB", "中国银行": "BOC"}
    t0 = datetime(2026, 11, 5, 9, 0, tzinfo=UTC)
    payments: list[Payment] = []
    revenue = {b["account"]: Decimal(b["total"]) for b in bills}

    def bank_code(bp: Party) -> str:
        name = bp.attributes.bank_name or ""
        return next((c for k, c in bank_codes.items() if name.startswith(k)), "ICBC")

    # groups: a head pays for 2–3 member accounts by agreed shares (drawn from payers not paying alone)
    groups: dict[str, dict[str, Decimal]] = {}
    pool = list(payers)
    rng.shuffle(pool)
    n_groups = max(1, len(pool) // 15)
    grouped: set[str] = set()
    for gi in range(n_groups):
        k = rng.randint(2, 3)
        members = pool[gi * 3: gi * 3 + k]
        if len(members) < 2:
            break
        gacct = f"GRP{seed % 1000:03d}{gi + 1:04d}"
        shares = {a: Decimal(s) for (a, _bp), s in zip(members, ("0.5", "0.3", "0.2") if k == 3 else ("0.6", "0.4"),
                                                         strict=False)}
        groups[gacct] = shares
        grouped |= set(shares)
        head_acct, head_bp = members[0]
        amount = sum((revenue.get(a, Decimal("1000.00")) for a in shares), Decimal(0)).quantize(CENT)
        payments.append(Payment(
            payment_id=f"PAY{len(payments) + 1:07d}", bank=bank_code(head_bp), payer_name=head_bp.name,
            payer_account=head_bp.source_id, billing_account=gacct, amount=amount,
            paid_at=t0 + timedelta(minutes=len(payments)), entity_id=entity_of[f"bank:{head_bp.source_id}"],
            expected=apportion(amount, shares),
        ))
    for acct, bp in payers:
        if acct in grouped:
            continue
        amount = revenue.get(acct) or Decimal(rng.randint(100, 5000))
        payments.append(Payment(
            payment_id=f"PAY{len(payments) + 1:07d}", bank=bank_code(bp), payer_name=bp.name, payer_account=bp.source_id,
            billing_account=acct, amount=amount, paid_at=t0 + timedelta(minutes=len(payments)),
            entity_id=entity_of[f"bank:{bp.source_id}"], expected={acct: amount},
        ))

    # resource: circuits of each resource customer; alarms on some circuits
    circuits: dict[str, str] = {}
    for p in by_sys["resource"]:
        for c in p.attributes.circuit_ids:
            circuits.setdefault(c, p.source_id)
    alarms: list[Alarm] = []
    for i, cid in enumerate(sorted(circuits)):
        if rng.random() < 0.25:
            code = circuits[cid]
            alarms.append(Alarm(
                alarm_id=f"ALM{len(alarms) + 1:07d}", circuit_id=cid, source_address=f"10.{i % 200}.{i % 97}.1",
                raised_at=t0 + timedelta(seconds=30 * i), resource_customer=code, entity_id=entity_of[f"resource:{code}"],
            ))
    # one-stop service orders: most complete; some fail resource check, provisioning, or billing (compensated)
    orders: list[Order] = []
    t1 = datetime(2026, 11, 6, 10, 0, tzinfo=UTC)
    for i, p in enumerate(by_sys["billing"][: max(8, len(by_sys["billing"]) // 4)]):
        kind = ("ok", "ok", "ok", "no_resource", "ok", "provisioning", "ok", "billing")[i % 8]
        line: dict[str, Any] = {"product": "DIA", "action": "add", "quantity": 1, "bandwidth_mbps": 100 * (1 + i % 10),
                                "site_address": (p.addresses[0].text if p.addresses else None)}
        src, sid = "billing", p.source_id
        expected, reason, comp = "completed", None, False
        if kind == "no_resource":
            line["product"], expected, reason = "5G-SLICE", "failed", "no resource"
        elif kind == "provisioning":
            line["bandwidth_mbps"], expected, reason = 20_000, "failed", "provisioning failed"
        elif kind == "billing":
            src, sid, expected, reason, comp = "crm", f"CRM-NEW-{i:05d}", "failed", "billing account", True
        orders.append(Order(payload={
            "order_id": f"ORD{seed % 1000:03d}{i + 1:05d}", "customer_source": src, "customer_source_id": sid,
            "channel": "portal", "lines": [line], "status": "received", "requested_at": (t1 + timedelta(minutes=i)).isoformat(),
        }, expected_status=expected, expected_reason=reason, compensated=comp))
    return TelecomWorld(
        orders=orders,
        seed=seed, dataset=ds, billing=by_sys["billing"], resource=by_sys["resource"], bank=by_sys["bank"],
        crm=by_sys["crm"], bills=bills, groups=groups, payments=payments, alarms=alarms, circuits=circuits,
        truth=truth, account_entity=account_entity, account_customer=account_customer,
    )
