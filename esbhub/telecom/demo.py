"""The demo main job: simulators + reference routes + a fixed volume of traffic + a checked summary.

Used by ``esbhub serve --demo`` (the hub's worker processes consume; this module drives the
traffic from a thread of the serve process and prints the summary) and by the end-to-end test
(:func:`run_inprocess`: one Worker in the test process). Both go through :class:`Demo`:

1. :meth:`Demo.prepare` — build the world (seeded), start the billing/alarm-receiver simulator
   on a loopback port, the bank's SFTP server and billing's FTP server (in-process peers,
   :mod:`esbhub.telecom.peers`, free loopback ports, host key and passwords generated per run),
   create the resource inventory (SQLite under the data dir), copy ``routes/telecom`` into the
   data dir with the simulator's address, the peers' ports and the known_hosts path filled in,
   and export ``ESBHUB_TELECOM_RESOURCE_DB`` / ``ESBHUB_TELECOM_SFTP_PASSWORD`` /
   ``ESBHUB_TELECOM_FTP_PASSWORD`` / ``ESBHUB_ROUTES_DIR`` / ``ESBHUB_DATABASE_URL`` for the
   worker processes (whose sftp/ftp sources poll the peers).
2. :meth:`Demo.drive` — three phases, each waited for until the bus is idle: customers from
   every system (billing, resource, bank natively; CRM as ``party.v1`` over HTTP when a hub URL
   is given), then billing's daily bill file dropped on the FTP peer (revenue → tier), then the
   bank's payment file dropped on the SFTP peer, the circuit-down traps and the service orders.
   A file phase waits until the hub archived the file on its peer (the source does that only
   after the file's envelopes are on the bus), then for the bus to be idle.
3. :meth:`Demo.summary` — golden records against the ground truth (pairwise precision/recall,
   false merges), payments posted exactly once with the right amounts, alarms delivered with
   their customers and on the 360 view, tiers, dead letters and the bus counts.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from esbhub.bus.envelope import Envelope
from esbhub.mdm.settings import MdmSettings
from esbhub.telecom import peers, sims
from esbhub.telecom.world import TelecomWorld, build

ROUTES_SRC = Path(__file__).resolve().parents[2] / "routes" / "telecom"
PLACEHOLDER_URL = "http://127.0.0.1:18930"
PLACEHOLDER_TRAP_PORT = "port: 18162"
PLACEHOLDER_SFTP_PORT = "port: 18922"
PLACEHOLDER_FTP_PORT = "port: 18921"
PLACEHOLDER_KEYS_DIR = "/etc/esbhub/telecom/"
PLACEHOLDER_RESOURCE_URL = "sqlite:///telecom-resource.db"  # the sql source's URL in resource-customers.yaml
PEER_DIRECTORY = "outbox"  # the directory both file routes poll on their peer
ROUTE_NAMES = ("telecom-nms-traps", "telecom-bank-payment-file", "telecom-bill-file", "telecom-billing-customers", "telecom-resource-customers", "telecom-bank-customers",
               "telecom-bill-revenue", "telecom-bank-payments", "telecom-circuit-down-alarms", "telecom-service-orders")
STATUS_QUEUE = "telecom-demo.order-status"  # the portal's view of service_order.status.v1 events
ROUTE_QUEUES = tuple(f"route.{n}" for n in ROUTE_NAMES)

Publish = Callable[[Sequence[Envelope]], None]


@dataclass
class DemoSummary:
    companies: int = 0
    source_records: int = 0
    golden_records: int = 0
    precision: float = 0.0
    recall: float = 0.0
    false_merges: int = 0  # golden records holding records of more than one real company
    payments: int = 0
    postings_expected: int = 0
    postings_received: int = 0
    postings_wrong_amount: int = 0
    postings_missing: int = 0
    postings_unexpected: int = 0
    duplicate_posts: int = 0
    payer_matched: int = 0  # single-account payments whose payer is the billing account's golden customer
    payer_checked: int = 0
    alarms: int = 0
    alarms_delivered: int = 0
    alarms_with_customer: int = 0
    alarms_right_customer: int = 0
    alarms_on_360: int = 0
    duplicate_alarms: int = 0
    # the 360 view: items linked by a route under a source key (mdm_link), found on the golden
    # record holding that key, with that key as their ``via``
    accounts: int = 0  # billing customers' accounts and the accounts of completed service orders
    accounts_on_360: int = 0
    services: int = 0  # circuits of resource customers
    services_on_360: int = 0
    bills: int = 0
    bills_on_360: int = 0
    payments_on_360: int = 0
    orders: int = 0
    orders_completed: int = 0
    orders_failed: int = 0
    orders_as_expected: int = 0
    orders_compensated: int = 0  # billing refused after provisioning: provisioning cancelled
    orders_inconsistent: int = 0  # provisioned and active at the end without a billing account
    status_events: int = 0
    bank_file_via_sftp: bool = False  # archived on the SFTP peer by the hub, nothing left or rejected
    bill_file_via_ftp: bool = False  # archived on the FTP peer by the hub, nothing left or rejected
    billing_changes: int = 0
    billing_via_soap: int = 0  # billing changes the hub's SOAP endpoint answered with an id that the bus delivered
    resource_changes: int = 0
    resource_via_sql: int = 0  # outbox rows the sql source stamped processed and whose envelope the bus delivered
    tiers_checked: int = 0
    tiers_right: int = 0
    dead_letters: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def counts_reconcile(self) -> bool:
        c = self.counts
        return bool(c) and c.get("in_flight", 0) == 0 and c.get("retrying", 0) == 0 and c["accepted"] == (
            c["delivered"] + c["dead_lettered"] + c.get("filtered", 0))

    def lines(self) -> list[str]:
        c = self.counts
        return [
            f"golden records: {self.golden_records} from {self.source_records} source records of {self.companies} "
            f"companies — pairwise precision {self.precision:.4f}, recall {self.recall:.4f}, "
            f"false merges {self.false_merges}",
            f"files: bank {'over SFTP, archived' if self.bank_file_via_sftp else 'NOT archived over SFTP'}; "
            f"bills {'over FTP, archived' if self.bill_file_via_ftp else 'NOT archived over FTP'}; "
            f"billing customer changes over SOAP {self.billing_via_soap}/{self.billing_changes}; "
            f"resource customer changes by SQL polling {self.resource_via_sql}/{self.resource_changes}",
            f"payments: {self.payments} in the bank file → {self.postings_received}/{self.postings_expected} postings "
            f"at billing (missing {self.postings_missing}, unexpected {self.postings_unexpected}, wrong amount "
            f"{self.postings_wrong_amount}, duplicates refused {self.duplicate_posts}); payer = billing customer "
            f"{self.payer_matched}/{self.payer_checked}",
            f"alarms: {self.alarms_delivered}/{self.alarms} delivered, {self.alarms_right_customer} with the right "
            f"key customer, {self.alarms_on_360} on the 360 view (duplicates refused {self.duplicate_alarms})",
            f"360 view by source key: accounts {self.accounts_on_360}/{self.accounts}, services (circuits) "
            f"{self.services_on_360}/{self.services}, bills {self.bills_on_360}/{self.bills}, payments "
            f"{self.payments_on_360}/{self.payments}, alarms {self.alarms_on_360}/{self.alarms}",
            f"service orders: {self.orders} → {self.orders_completed} completed, {self.orders_failed} failed "
            f"({self.orders_compensated} compensated), {self.orders_as_expected} as expected, {self.orders_inconsistent} "
            f"left inconsistent; {self.status_events} status events",
            f"tiers: {self.tiers_right}/{self.tiers_checked} golden records tiered from their bills",
            f"bus: accepted {c.get('accepted', 0)} = delivered {c.get('delivered', 0)} + filtered "
            f"{c.get('filtered', 0)} + dead-lettered {c.get('dead_lettered', 0)} (in flight {c.get('in_flight', 0)}, "
            f"retrying {c.get('retrying', 0)}) → {'reconciled' if self.counts_reconcile else 'NOT reconciled'}; "
            f"dead letters {self.dead_letters}; {self.seconds:.1f} s",
        ]


class Demo:
    def __init__(self, data_dir: Path, *, n_companies: int = 120, seed: int = 2026, sim_port: int = 0,
                 database_url: str | None = None, mdm: MdmSettings | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.mdm = mdm or MdmSettings()  # the hub's: its MDM queue, and the tiers the summary checks
        self.queues = (*ROUTE_QUEUES, f"route.{self.mdm.queue}")
        self.n_companies, self.seed, self.sim_port = n_companies, seed, sim_port
        self.database_url = database_url or f"sqlite:///{self.data_dir / 'hub.db'}"
        self.world: TelecomWorld | None = None
        self.sim: sims.SimServer | None = None
        self.routes_dir = self.data_dir / "telecom-routes"
        self.resource_url = f"sqlite:///{self.data_dir / 'telecom-resource.db'}"
        self.sftp: peers.SftpPeer | None = None
        self.ftp: peers.FtpPeer | None = None
        self.bank_file: Path | None = None  # where the bank file was dropped on the SFTP peer
        self.bill_file: Path | None = None  # where the bill file was dropped on the FTP peer
        self.env: dict[str, str] = {}
        self.billing_accepted: dict[str, str] = {}  # billing customer id -> message id the hub's SOAP endpoint answered
        self.resource_change_ids: list[int] = []  # rows the demo wrote into the inventory's change outbox
        self.trap_port = 0
        self.community = os.environ.get("ESBHUB_TELECOM_SNMP_COMMUNITY") or "public"

    # ---------------------------------------------------------------- set-up
    def prepare(self) -> Demo:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.world = w = build(self.n_companies, self.seed)
        self.sim = sims.SimServer(w, port=self.sim_port).start()
        sims.create_resource_db(w, self.resource_url).dispose()
        sftp_password, ftp_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        shutil.rmtree(self.data_dir / "bank-sftp", ignore_errors=True)
        shutil.rmtree(self.data_dir / "billing-ftp", ignore_errors=True)
        self.sftp = peers.SftpPeer(self.data_dir / "bank-sftp", self.data_dir / "bank-sftp-keys", username="bank",
                                   password=sftp_password).start()
        self.ftp = peers.FtpPeer(self.data_dir / "billing-ftp", username="billing", password=ftp_password).start()
        (self.sftp.root / PEER_DIRECTORY).mkdir(parents=True, exist_ok=True)
        (self.ftp.root / PEER_DIRECTORY).mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.routes_dir, ignore_errors=True)
        self.routes_dir.mkdir(parents=True)
        self.trap_port = _free_udp_port()
        keys_dir = str(self.sftp.known_hosts.parent) + "/"
        for f in sorted(ROUTES_SRC.glob("*.yaml")):
            text = f.read_text(encoding="utf-8").replace(PLACEHOLDER_URL, self.sim.url)
            text = text.replace(PLACEHOLDER_TRAP_PORT, f"port: {self.trap_port}")
            text = text.replace(PLACEHOLDER_SFTP_PORT, f"port: {self.sftp.port}")
            text = text.replace(PLACEHOLDER_FTP_PORT, f"port: {self.ftp.port}")
            text = text.replace(PLACEHOLDER_KEYS_DIR + "bank_known_hosts", str(self.sftp.known_hosts))
            text = text.replace(PLACEHOLDER_KEYS_DIR, keys_dir)
            text = text.replace(PLACEHOLDER_RESOURCE_URL, self.resource_url)
            (self.routes_dir / f.name).write_text(text, encoding="utf-8")
        self.env = {
            "ESBHUB_TELECOM_SFTP_PASSWORD": sftp_password,
            "ESBHUB_TELECOM_FTP_PASSWORD": ftp_password,
            "ESBHUB_TELECOM_RESOURCE_DB": self.resource_url,
            "ESBHUB_ROUTES_DIR": str(self.routes_dir),
            "ESBHUB_DATABASE_URL": self.database_url,
            "ESBHUB_DATA_DIR": str(self.data_dir),
            "ESBHUB_TELECOM_SNMP_COMMUNITY": self.community,
        }
        os.environ.update(self.env)
        return self

    def stop(self) -> None:
        for peer in (self.sim, self.sftp, self.ftp):
            if peer is not None:
                peer.stop()

    # ---------------------------------------------------------------- traffic
    def customer_messages(self) -> tuple[list[Envelope], list[dict[str, Any]]]:
        """The bank's native customer changes (published as its source adapter would) and the CRM's
        party.v1 payloads. Billing's go over SOAP (:meth:`push_billing_changes`), resource's through
        the inventory's outbox table (:meth:`write_resource_changes`)."""
        w = self._w
        envs = [Envelope.create("customer.bank.v1", sims.bank_record(p), source="bank") for p in w.bank]
        return envs, [sims.crm_party(p) for p in w.crm]

    def push_billing_changes(self, hub_url: str, api_key: str) -> int:
        """Billing pushes each customer change to the hub's SOAP endpoint (zeep, from the WSDL)."""
        client = sims.BillingSoapClient(hub_url, api_key)
        try:
            for i, p in enumerate(self._w.billing, 1):
                client.push(sims.billing_record(p), f"BILCHG-{self.seed}-{i:06d}")
        finally:
            client.close()
        self.billing_accepted = dict(client.accepted)
        return len(client.accepted)

    def write_resource_changes(self) -> int:
        """The inventory writes one outbox row per customer change; the hub's sql source polls them."""
        self.resource_change_ids = sims.write_resource_changes(self._w, self.resource_url)
        return len(self.resource_change_ids)

    def wait_resource_changes_taken(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            _total, pending = sims.resource_changes_pending(self.resource_url)
            if pending == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pending} resource change rows not taken by the hub's sql source after {timeout:.0f}s")
            time.sleep(0.2)

    def drop_bill_file(self) -> Path:
        """Billing puts its daily bill file on its FTP server (temporary name, then rename)."""
        assert self.ftp is not None, "prepare() first"
        self.bill_file = sims.write_bill_file(self._w, self.ftp.root / PEER_DIRECTORY)
        return self.bill_file

    def drop_bank_file(self) -> Path:
        """The bank puts its payment result file on its SFTP server (temporary name, rename, done marker)."""
        assert self.sftp is not None, "prepare() first"
        name = f"PAY_{sims.PERIOD.replace('-', '')}_{self._w.seed}.txt"
        self.bank_file = self.sftp.drop(name, sims.bank_file_bytes(self._w), directory=PEER_DIRECTORY, marker=".done")
        return self.bank_file

    @staticmethod
    def archived(path: Path | None) -> bool:
        """The hub took ``path`` off its peer: moved to archive/, not left in place nor rejected to error/."""
        if path is None:
            return False
        d = path.parent
        return (d / "archive" / path.name).exists() and not path.exists() and not (d / "error" / path.name).exists()

    def wait_archived(self, path: Path, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.archived(path):
            rejected = path.parent / "error" / f"{path.name}.error.txt"
            if rejected.exists():
                raise RuntimeError(f"the hub rejected {path.name}: {rejected.read_text(encoding='utf-8')[:300]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path.name} not archived by the hub after {timeout:.0f}s")
            time.sleep(0.2)

    def order_messages(self) -> list[Envelope]:
        return [Envelope.create("service_order.v1", o.payload, source="portal") for o in self._w.orders]

    def alarm_messages(self) -> list[Envelope]:
        return [Envelope.create("alarm.v1", sims.alarm_payload(a), source="nms") for a in self._w.alarms]

    @property
    def _w(self) -> TelecomWorld:
        assert self.world is not None, "prepare() first"
        return self.world

    def drive(self, publish: Publish, store: Any, broker: Any, *, soap_url: str, soap_key: str,
              crm_post: Callable[[dict[str, Any]], None] | None = None,
              timeout: float = 120.0, log: Callable[[str], None] = lambda _m: None) -> None:
        """Send the three phases, waiting for the bus to be idle after each. ``soap_url`` is the
        hub (its ``/soap/customer.billing.v1`` endpoint), ``soap_key`` billing's API key there."""
        self.declare_queues(broker)
        n_res = self.write_resource_changes()
        n_bil = self.push_billing_changes(soap_url, soap_key)
        envs, crm = self.customer_messages()
        if crm_post is None:
            envs += [Envelope.create("party.v1", p, source="crm") for p in crm]
        else:
            for p in crm:
                crm_post(p)
        _publish_batches(publish, envs)
        log(f"phase 1: customer changes — {n_bil} from billing over SOAP ({soap_url}/soap/customer.billing.v1), "
            f"{n_res} rows in the resource inventory's change outbox (polled by the sql source), "
            f"{len(self._w.bank)} from the bank, {len(crm)} from the CRM")
        self.wait_resource_changes_taken(timeout=timeout)
        wait_idle(store, broker, timeout=timeout, queues=self.queues)
        bill_file = self.drop_bill_file()
        assert self.ftp is not None and self.sftp is not None
        log(f"phase 2: {len(self._w.bills)} monthly bills in {bill_file.name} on billing's FTP server "
            f"(ftp://127.0.0.1:{self.ftp.port}/{PEER_DIRECTORY}; revenue → tier)")
        self.wait_archived(bill_file, timeout=timeout)
        wait_idle(store, broker, timeout=timeout, queues=self.queues)
        orders = self.order_messages()
        bank_file = self.drop_bank_file()
        _publish_batches(publish, orders)
        wait_udp_listener(self.trap_port, timeout=timeout)
        alarms = self._w.alarms
        sims.send_traps(alarms, self.trap_port, self.community)
        log(f"phase 3: {len(self._w.payments)} bank payments in {bank_file.name} on the bank's SFTP server "
            f"(sftp://127.0.0.1:{self.sftp.port}/{PEER_DIRECTORY}), {len(alarms)} circuit-down SNMP traps to "
            f"udp/{self.trap_port}, {len(orders)} service orders")
        self.wait_archived(bank_file, timeout=timeout)
        # traps are on the bus only once the receiver emitted them: wait for the desk to have them all
        sim = self.sim
        assert sim is not None
        deadline = time.monotonic() + timeout
        while len({b.get("alarm_id") for b in list(sim.alarms.values())}) < len(alarms) and time.monotonic() < deadline:
            time.sleep(0.2)
        wait_idle(store, broker, timeout=timeout, queues=self.queues)

    def declare_queues(self, broker: Any) -> None:
        """Declare the routes' and the MDM's queues (as the workers do), so nothing published before
        a worker process has started is unroutable."""
        from esbhub.routes.loader import load_paths

        res = load_paths([self.routes_dir])
        if res.errors:
            raise RuntimeError(f"telecom routes invalid: {res.errors[0]}")
        for lr in res.routes:
            broker.declare_queue(f"route.{lr.route.name}", list(lr.route.from_.topics))
        broker.declare_queue(f"route.{self.mdm.queue}", ["party.v1"])
        broker.declare_queue(STATUS_QUEUE, ["service_order.status.v1"])

    # ---------------------------------------------------------------- checks
    def order_statuses(self, broker: Any) -> list[dict[str, Any]]:
        """Drain the status events the order route sent back (in arrival order)."""
        out = []
        while (d := broker.get(STATUS_QUEUE, timeout=0.2)) is not None:
            out.append(dict(d.envelope.payload))
            d.ack()
        return out

    def summary(self, store: Any, *, started: float | None = None, broker: Any = None) -> DemoSummary:
        from esbhub.mdm.service import MdmService, NotFound

        w = self._w
        sim = self.sim
        assert sim is not None
        svc = MdmService(self.database_url, settings=self.mdm, migrate=False)
        s = DemoSummary(companies=len({e for e in w.truth.values()}), source_records=len(w.truth))
        # golden records against the truth
        part = [set(c) & set(w.truth) for c in svc.partition_now()]
        part = [c for c in part if c]
        s.golden_records = len(part)
        got_pairs = {(a, b) for c in part for a in c for b in c if a < b}
        true_pairs = {(a, b) for a in w.truth for b in w.truth if a < b and w.truth[a] == w.truth[b]}
        tp = len(got_pairs & true_pairs)
        s.precision = tp / len(got_pairs) if got_pairs else 1.0
        s.recall = tp / len(true_pairs) if true_pairs else 1.0
        s.false_merges = sum(1 for c in part if len({w.truth[k] for k in c}) > 1)
        golden_of: dict[str, str | None] = {}  # source key -> current golden id (from the xref)

        def gid_of(system: str, sid: str) -> str | None:
            key = f"{system}:{sid}"
            if key not in golden_of:
                try:
                    golden_of[key] = svc.xref(system, sid)["golden_id"]
                except NotFound:
                    golden_of[key] = None
            return golden_of[key]

        views: dict[str, dict[str, list[dict[str, Any]]]] = {}  # golden id -> its 360 view's linked items

        def on_360(kind: str, ref: str, system: str, sid: str) -> bool:
            """Whether the item a route linked under ``system:sid`` is on that key's golden record."""
            gid = gid_of(system, sid)
            if gid is None:
                return False
            if gid not in views:
                views[gid] = svc.get_customer(gid).get("linked", {})
            key = f"{system}:{sid}"
            return any(x["ref"] == f"{ref}@{key}" and x["via"] == key for x in views[gid].get(kind, []))

        # files: taken off their peers by the hub's ftp/sftp sources
        s.bank_file_via_sftp = self.sftp is not None and self.archived(self.bank_file) and self.bank_file is not None \
            and self.bank_file.is_relative_to(self.sftp.root)
        s.bill_file_via_ftp = self.ftp is not None and self.archived(self.bill_file) and self.bill_file is not None \
            and self.bill_file.is_relative_to(self.ftp.root)
        # customer changes: billing's answered over SOAP, resource's taken from the outbox by the sql source
        from esbhub.adapters.base import stable_id

        def delivered(mid: str, type_: str) -> bool:
            m = store.get_message(mid)
            return m is not None and m["type"] == type_ and m["state"] == "delivered"

        s.billing_changes = len(w.billing)
        s.billing_via_soap = sum(1 for p in w.billing if p.source_id in self.billing_accepted
                                 and delivered(self.billing_accepted[p.source_id], "customer.billing.v1"))
        s.resource_changes = len(w.resource)
        total, pending = sims.resource_changes_pending(self.resource_url)
        if total == len(self.resource_change_ids) and pending == 0:
            s.resource_via_sql = sum(1 for cid in self.resource_change_ids
                                     if delivered(stable_id(f"{sims.res_changes.name}:{cid}"), "customer.resource.v1"))
        # payments
        s.payments = len(w.payments)
        expected = w.expected_postings()
        s.postings_expected = len(expected)
        received: dict[tuple[str, str], list[Decimal]] = {}
        posted = list(sim.postings.values())
        for body in posted:
            received.setdefault((str(body.get("payment_id")), str(body.get("billing_account"))), []).append(
                Decimal(str(body.get("amount"))))
        s.postings_received = len(posted)
        s.duplicate_posts = sim.duplicate_posts + sum(len(v) - 1 for v in received.values())
        s.postings_missing = sum(1 for k in expected if k not in received)
        s.postings_unexpected = sum(1 for k in received if k not in expected)
        s.postings_wrong_amount = sum(1 for k, v in received.items() if k in expected and v[0] != expected[k])
        by_payment = {p.payment_id: p for p in w.payments}
        for body in posted:
            p = by_payment.get(str(body.get("payment_id")))
            if p is None or body.get("group_account"):
                continue
            s.payer_checked += 1
            cust = w.account_customer.get(p.billing_account)
            if cust and body.get("golden_id") and body.get("golden_id") == gid_of("billing", cust):
                s.payer_matched += 1
        # alarms
        s.alarms = len(w.alarms)
        delivered: dict[str, dict[str, Any]] = {}
        for body in sim.alarms.values():
            delivered.setdefault(str(body.get("alarm_id")), body)
        s.duplicate_alarms = sim.duplicate_alarms + len(sim.alarms) - len(delivered)
        for a in w.alarms:
            body = delivered.get(a.alarm_id)
            if body is None:
                continue
            s.alarms_delivered += 1
            custs = body.get("customers") or []
            if custs:
                s.alarms_with_customer += 1
            want = gid_of("resource", a.resource_customer)
            if want and any(c.get("golden_id") == want for c in custs):
                s.alarms_right_customer += 1
            s.alarms_on_360 += on_360("alarm", a.alarm_id, "resource", a.resource_customer)
        # service orders: final status as expected, compensation done, nothing left half-done
        s.orders = len(w.orders)
        events = self.order_statuses(broker) if broker is not None else []
        s.status_events = len(events)
        final = {e["order_id"]: e for e in events if e.get("status") in ("completed", "failed")}
        for o in w.orders:
            oid = o.payload["order_id"]
            e = final.get(oid)
            if e is None:
                continue
            s.orders_completed += e["status"] == "completed"
            s.orders_failed += e["status"] == "failed"
            if e["status"] == o.expected_status and (o.expected_reason or "") in (e.get("status_reason") or ""):
                s.orders_as_expected += 1
            if o.compensated and sim.provisioned.get(oid) == "cancelled":
                s.orders_compensated += 1
            if sim.provisioned.get(oid) == "active" and oid not in sim.accounts:
                s.orders_inconsistent += 1
        # the 360 view: accounts, services, bills and payments under the source key they came with
        for p in w.billing:
            if p.attributes.billing_account:
                s.accounts += 1
                s.accounts_on_360 += on_360("account", p.attributes.billing_account, "billing", p.source_id)
        for o in w.orders:
            oid = o.payload["order_id"]
            if oid in sim.accounts and final.get(oid, {}).get("status") == "completed":
                s.accounts += 1
                s.accounts_on_360 += on_360("account", sim.accounts[oid], o.payload["customer_source"],
                                            o.payload["customer_source_id"])
        for p in w.resource:
            for cid in p.attributes.circuit_ids:
                s.services += 1
                s.services_on_360 += on_360("service", cid, "resource", p.source_id)
        s.bills = len(w.bills)
        s.bills_on_360 = sum(on_360("bill", b["bill_id"], "billing", b["customer_source_id"]) for b in w.bills)
        s.payments_on_360 = sum(on_360("payment", p.payment_id, "bank", p.payer_account) for p in w.payments)
        # tiers: each golden holding billing records, from the bills of its accounts
        revenue = w.expected_revenue()
        tiering = svc.settings.tiering
        seen: set[str] = set()
        for p in w.billing:
            gid = gid_of("billing", p.source_id)
            if not gid or gid in seen:
                continue
            seen.add(gid)
            g = svc.golden(gid)
            accts = {w.customers_account(k) for k in g["source_keys"] if k.startswith("billing:")}
            rev = sum((revenue.get(a, Decimal(0)) for a in accts if a), Decimal(0))
            if not any(a in revenue for a in accts if a):
                continue
            s.tiers_checked += 1
            if g["tier"] == tiering.tier(float(rev)):
                s.tiers_right += 1
        # bus
        store.flush()
        s.dead_letters = len(store.dlq_list(limit=10_000))
        s.counts = store.counts()
        if started is not None:
            s.seconds = time.monotonic() - started
        return s


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_udp_listener(port: int, *, timeout: float = 60.0) -> None:
    """Wait until something listens on udp ``port`` of 127.0.0.1 (the trap receiver of a worker)."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return  # taken: the receiver is up
        if time.monotonic() > deadline:
            raise TimeoutError(f"no SNMP trap receiver on udp/{port} after {timeout:.0f}s")
        time.sleep(0.1)


def _publish_batches(publish: Publish, envs: list[Envelope], size: int = 200) -> None:
    for i in range(0, len(envs), size):
        publish(envs[i:i + size])


def wait_idle(store: Any, broker: Any, *, queues: Sequence[str], timeout: float = 120.0, settle: int = 3) -> None:
    """Return once nothing is queued (in ``queues``), in flight or waiting for a retry (``settle``
    checks in a row)."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while True:
        store.flush()
        c = store.counts()
        depth = 0
        for q in queues:
            try:
                depth += broker.queue_depth(q)
            except Exception:  # noqa: BLE001, S112 - a queue not declared yet holds nothing
                continue
        busy = c.get("in_flight", 0) + c.get("retrying", 0) + depth
        quiet = quiet + 1 if busy == 0 else 0
        if quiet >= settle:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"bus not idle after {timeout:.0f}s: counts {c}, queued {depth}")
        time.sleep(0.2)


def direct_publisher(broker: Any, store: Any) -> Publish:
    """Publish as a source adapter does: record the messages as accepted, then put them on the bus."""

    def publish(envs: Sequence[Envelope]) -> None:
        store.record_accepted(list(envs))
        broker.publish_many(list(envs))

    return publish


class InprocessSoapEndpoint:
    """The hub's inbound SOAP endpoint (:func:`esbhub.adapters.soap_server.create_router`) served by
    uvicorn from a thread of this process, for :func:`run_inprocess` (which runs no API app):
    the ``customer.billing.v1`` service, API keys checked against the hub database's key store,
    each accepted message published through ``publish`` (durable) before the answer."""

    def __init__(self, publish: Publish, database_url: str) -> None:
        from esbhub.auth.store import ApiKeyStore

        self.publish = publish
        self.keys = ApiKeyStore(database_url)
        self.port = _free_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        self._thread: Any = None

    def create_key(self) -> str:
        _kid, key = self.keys.create("billing", scopes=["ingest"], types=[sims.BillingSoapClient.SERVICE],
                                     created_by="telecom-demo")
        return key

    def start(self, timeout: float = 20.0) -> InprocessSoapEndpoint:
        import asyncio
        import threading

        import uvicorn
        from fastapi import FastAPI

        from esbhub.adapters.soap_server import create_router, default_services

        async def emit(env: Envelope) -> None:
            await asyncio.to_thread(self.publish, [env])

        app = FastAPI()
        app.state.keys = self.keys
        app.include_router(create_router([s for s in default_services() if s.name == sims.BillingSoapClient.SERVICE],
                                         emit=emit))
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="off", access_log=False))
        self._thread = threading.Thread(target=self._server.run, name="telecom-soap", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the in-process SOAP endpoint did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


def _free_tcp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_inprocess(settings: Any, *, n_companies: int = 60, seed: int = 2026, timeout: float = 90.0,
                  log: Callable[[str], None] = lambda _m: None) -> tuple[Demo, DemoSummary]:
    """Run the whole demo in this process (one Worker with the routes and the MDM) and summarize."""
    from esbhub.bus.broker import create_broker
    from esbhub.bus.store import BusStore
    from esbhub.bus.worker import Worker
    from esbhub.config import set_process_settings
    from esbhub.db import upgrade
    from esbhub.mdm.realtime import subscriptions as mdm_subscriptions
    from esbhub.routes import lookups
    from esbhub.routes.runtime import RouteRuntime

    started = time.monotonic()
    db_url = settings.effective_database_url
    saved_env = dict(os.environ)
    demo = Demo(Path(settings.data_dir), n_companies=n_companies, seed=seed, database_url=db_url,
                mdm=settings.mdm).prepare()
    settings = settings.model_copy(update={"routes_dir": demo.routes_dir})
    upgrade(db_url)
    lookups._svc = None  # the MDM lookups read the database the settings name now
    process_before = set_process_settings(settings)  # as `esbhub worker` does: the sinks' MDM service is ours
    broker = create_broker(settings.effective_broker_url, exchange=settings.exchange)
    broker.connect()
    store = BusStore(db_url)
    rt = RouteRuntime(settings, broker, store, watch=False)
    worker = None
    soap: InprocessSoapEndpoint | None = None
    try:
        applied = rt.sync_files()
        if applied is not None and applied.errors:
            raise RuntimeError(f"telecom routes invalid: {applied.errors[0]}")
        subs = rt.load() + mdm_subscriptions(settings, broker)
        worker = Worker(broker, store, subs, settings)
        worker.start()
        rt.start()  # the route sources (the SNMP trap receiver)
        publish = direct_publisher(broker, store)
        soap = InprocessSoapEndpoint(publish, db_url).start()
        demo.drive(publish, store, broker, soap_url=soap.url, soap_key=soap.create_key(), timeout=timeout, log=log)
        return demo, demo.summary(store, started=started, broker=broker)
    finally:
        if soap is not None:
            soap.stop()
        if worker is not None:
            worker.stop()
        rt.stop()
        store.close()
        broker.close()
        demo.stop()
        lookups._svc = None
        set_process_settings(process_before)
        for k in demo.env:  # the demo's environment was for this run only
            if k in saved_env:
                os.environ[k] = saved_env[k]
            else:
                os.environ.pop(k, None)


# ------------------------------------------------------------------ esbhub serve --demo
def demo_data_dir(base: Path) -> Path:
    """A fresh ``<data dir>/demo`` (the demo is deterministic: it starts from nothing each time)."""
    d = Path(base) / "demo"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


class ServeDemo:
    """The demo beside ``esbhub serve``: prepared before the workers start (they inherit the
    environment), driven from a thread once the API answers, summary printed; the hub keeps
    running afterwards (``ESBHUB_DEMO_EXIT=1``: stop it after the summary, for smoke tests)."""

    def __init__(self, settings: Any, *, n_companies: int | None = None, seed: int | None = None) -> None:
        self.settings = settings
        n = n_companies or int(os.environ.get("ESBHUB_DEMO_COMPANIES", "120"))
        sd = seed if seed is not None else int(os.environ.get("ESBHUB_DEMO_SEED", "2026"))
        self.demo = Demo(Path(settings.data_dir), n_companies=n, seed=sd,
                         database_url=settings.effective_database_url, mdm=settings.mdm).prepare()
        self._thread: Any = None
        self.summary: DemoSummary | None = None
        self.error: str | None = None

    def start(self, url: str) -> None:
        import threading

        self._thread = threading.Thread(target=self._run, args=(url,), name="telecom-demo", daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        import signal

        import click

        try:
            self._drive(url, click.echo)
        except Exception as exc:  # noqa: BLE001 - the demo failing must not take the hub down; say why
            self.error = f"{type(exc).__name__}: {exc}"
            click.echo(f"demo: FAILED — {self.error}", err=True)
        if os.environ.get("ESBHUB_DEMO_EXIT") == "1":
            os.kill(os.getpid(), signal.SIGINT)

    def _drive(self, url: str, echo: Callable[[str], None]) -> None:
        import logging

        import httpx

        from esbhub.auth.store import admin_key_path
        from esbhub.bus.broker import create_broker
        from esbhub.bus.store import BusStore

        logging.getLogger("httpx").setLevel(logging.WARNING)  # not one INFO line per CRM push
        started = time.monotonic()
        deadline = started + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"hub at {url} not ready after 60 s")
            time.sleep(0.2)
        key_file = admin_key_path(self.settings)
        key = key_file.read_text(encoding="utf-8").strip() if key_file.exists() else None
        broker = create_broker(self.settings.effective_broker_url, exchange=self.settings.exchange)
        broker.connect()
        store = BusStore(self.settings.effective_database_url)
        client = httpx.Client(base_url=url, timeout=10, headers={"Authorization": f"Bearer {key}"} if key else {})
        try:
            def crm_post(payload: dict[str, Any]) -> None:
                r = client.post("/v1/messages/party.v1", json=payload)
                if r.status_code != 202:
                    raise RuntimeError(f"CRM push refused: {r.status_code} {r.text[:300]}")

            if not key:
                raise RuntimeError("no admin key to create billing's API key with (the demo needs the admin key file)")
            r = client.post("/v1/keys", json={"name": "billing", "scopes": ["ingest"],
                                              "types": [sims.BillingSoapClient.SERVICE]})
            if r.status_code != 201:
                raise RuntimeError(f"could not create billing's API key: {r.status_code} {r.text[:300]}")
            billing_key = r.json()["key"]
            echo(f"demo: {self.demo.n_companies} companies (seed {self.demo.seed}); simulators at {self.demo.sim.url if self.demo.sim else '?'}; "
                 f"routes from {self.demo.routes_dir}")
            self.demo.drive(direct_publisher(broker, store), store, broker, soap_url=url, soap_key=billing_key,
                            crm_post=crm_post, timeout=120, log=lambda m: echo(f"demo: {m}"))
            self.summary = s = self.demo.summary(store, started=started, broker=broker)
            bar = "-" * 78
            echo(f"\n{bar}\n  esbhub demo — first pass done\n  hub: {url}   (API docs {url}/docs)\n"
                 f"  admin key: {key or '(none created)'}   (file {key_file})")
            for line in s.lines():
                echo(f"  {line}")
            gid = self._example_customer()
            if gid:
                echo(f"  try: curl -H 'Authorization: Bearer {key}' {url}/v1/customers/{gid}")
            echo(bar)
        finally:
            client.close()
            store.close()
            broker.close()

    def _example_customer(self) -> str | None:
        from esbhub.mdm.service import MdmService, NotFound

        w = self.demo.world
        if not w or not w.alarms:
            return None
        try:
            return MdmService(self.demo.database_url, settings=self.demo.mdm, migrate=False).xref("resource", w.alarms[0].resource_customer)["golden_id"]
        except NotFound:
            return None

    def stop(self) -> None:
        self.demo.stop()
