"""Events in commit order per golden id: the publication lock (esbhub.mdm.publication) and the
MdmService paths that publish under it — on SQLite and PostgreSQL, with two services on one
database standing for two processes (each has its own lock: a file lock / an advisory lock)."""

from __future__ import annotations

import fcntl
import os
import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from esbhub.bus.envelope import Envelope
from esbhub.errors import BrokerUnavailable
from esbhub.mdm.publication import ADVISORY_KEY, PublicationLock
from esbhub.mdm.service import MdmService
from mdm.fakes import db_fixture_url, party, uscc

BOTH = pytest.mark.parametrize("url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
SAFETY_S = 30  # only so that a broken test fails instead of hanging; nothing waits for it to pass


@pytest.fixture(params=["sqlite"])
def url(request, tmp_path, unique) -> str:
    return db_fixture_url(request, tmp_path, unique)


class Bus:
    """A broker's ``publish_many`` that records what reached the bus, or fails while down."""

    def __init__(self) -> None:
        self.events: list[Envelope] = []
        self.down = False

    def publish_many(self, envelopes, **_kw) -> None:
        if self.down:
            raise BrokerUnavailable("broker down")
        self.events += envelopes

    def seqs(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for e in self.events:
            out.setdefault(e.payload["golden_id"], []).append(e.payload["seq"])
        return out


def crm1(**kw):
    return party("crm", "1", "深圳市华信科技有限公司", uscc=uscc(1), phones=["0755-88886666"], city="深圳", **kw)


def crm9():
    return party("crm", "9", "广州市远洋物流有限公司", phones=["020-33334444"], city="广州")


def later(status: str):
    return crm1(status=status, updated=datetime(2026, 3, 1, tzinfo=UTC))


# ------------------------------------------------------------------------------------------ the lock
def test_on_sqlite_the_lock_is_a_file_lock_next_to_the_database_held_from_acquire_to_release(tmp_path):
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    lock, other = PublicationLock(url), PublicationLock(url)  # e.g. the API's and a worker's
    fd = os.open(tmp_path / "hub.db-mdm-publish.lock", os.O_RDWR | os.O_CREAT)  # as another process would
    try:
        with lock:
            with lock:  # reentrant in a thread
                pass
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert other.acquire(blocking=False) is False
            took: list[bool] = []
            t = threading.Thread(target=lambda: took.append(lock.acquire(blocking=False)))
            t.start()
            t.join()
            assert took == [False]  # nor another thread of this process
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert other.acquire(blocking=False) is True
        other.release()
    finally:
        os.close(fd)


@pytest.mark.parametrize("url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_on_postgresql_the_lock_is_an_advisory_lock_no_other_session_gets_meanwhile(url):
    lock = PublicationLock(url)
    other = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with other.connect() as c:
            def take() -> bool:
                got = c.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}).scalar()
                if got:
                    c.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
                return bool(got)

            with lock:
                with lock:  # reentrant in a thread
                    pass
                assert take() is False
            assert take() is True
    finally:
        other.dispose()


@pytest.mark.parametrize("url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_an_advisory_lock_whose_session_the_server_ended_connects_afresh_at_the_next_acquire(url):
    lock = PublicationLock(url)
    with lock:
        pid = lock._outer.cur.connection.info.backend_pid
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            # waits until that backend is gone (PostgreSQL 14+), so the next acquire finds it dead
            assert c.execute(sa.text("SELECT pg_terminate_backend(:p, 10000)"), {"p": pid}).scalar()
            with lock:
                assert lock._outer.cur.connection.info.backend_pid != pid
                assert c.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}).scalar() is False
    finally:
        admin.dispose()


# ------------------------------------------------------------------------------ ordering on the bus
@BOTH
def test_a_steward_event_left_in_the_outbox_goes_out_before_a_later_engine_event_of_the_same_golden_id(url):
    svc, bus = MdmService(url), Bus()
    svc.ingest(crm1(), "e1", publish=bus.publish_many)  # ingest_many of one
    svc.ingest_many([(crm9(), "e2", None)], publish=bus.publish_many)
    bus.down = True
    merged = svc.merge("G0000000001", "G0000000002", by="erin")  # G1 v2, G2 v2: committed, in the outbox
    with pytest.raises(BrokerUnavailable):
        svc.publish_pending(bus)  # what the API does right after: the broker is down
    assert svc.pending_events() == 2
    bus.down = False
    updated = svc.ingest_many([(later("suspended"), "e3", None)], publish=bus.publish_many)  # G1 v3
    assert [e.id for e in bus.events[2:]] == [e.id for e in merged + updated]
    assert bus.seqs() == {"G0000000001": [1, 2, 3], "G0000000002": [1, 2]}
    assert svc.pending_events() == 0


@BOTH
def test_engine_events_that_could_not_be_published_go_out_before_the_next_version_and_again_on_redelivery(url):
    svc, bus = MdmService(url), Bus()
    svc.ingest_many([(crm1(), "e1", None)], publish=bus.publish_many)
    bus.down = True
    with pytest.raises(BrokerUnavailable):  # committed: the worker does not ack, the bus redelivers
        svc.ingest_many([(later("suspended"), "e2", None)], publish=bus.publish_many)
    assert svc.golden("G0000000001")["version"] == 2 and svc.pending_events() == 1
    bus.down = False
    svc.override("G0000000001", "industry", "金融", by="erin")  # v3, by a steward (the API publishes it)
    svc.publish_pending(bus)
    assert bus.seqs() == {"G0000000001": [1, 2, 3]}
    again = svc.ingest_many([(later("suspended"), "e2", None)], publish=bus.publish_many)  # the redelivery
    assert [e.id for e in again] == [bus.events[1].id] and bus.events[-1].id == again[0].id  # same id: a duplicate
    assert svc.pending_events() == 0


class _Announcing:
    """A lock (a service's publication lock or its in-process lock) that says when a thread has
    to wait for it, then waits."""

    def __init__(self, lock, waiting: threading.Event) -> None:
        self.lock, self.waiting = lock, waiting

    def acquire(self, blocking: bool = True) -> bool:
        if self.lock.acquire(blocking=False):
            return True
        if not blocking:
            return False
        self.waiting.set()
        return self.lock.acquire()

    def release(self) -> None:
        self.lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


@BOTH
@pytest.mark.parametrize("second", ["steward", "engine"])
@pytest.mark.parametrize("shape", ["two processes", "one process"])
def test_two_publishers_racing_keep_each_golden_id_s_versions_in_commit_order_on_the_bus(url, second, shape):
    """A worker (``first``) committed version 2 of G1 and is publishing it when another writer
    (``second``: the API after a steward merge, or a second worker) commits version 3 — in another
    process (a service with its own publication lock) or in the same one (``make run``: one
    service, its threads). The first publish is held until the second writer has either published
    (nothing stopped it) or is waiting for a lock; then it goes on. Version 2 must reach the bus
    before version 3."""
    setup, bus = Bus(), Bus()
    first = MdmService(url)
    second_svc = MdmService(url) if shape == "two processes" else first
    first.ingest_many([(crm1(), "e1", None), (crm9(), "e2", None)], publish=setup.publish_many)
    in_publish, go_on, second_progress = threading.Event(), threading.Event(), threading.Event()

    def held_publish(envelopes, **kw) -> None:
        in_publish.set()
        assert go_on.wait(SAFETY_S)
        bus.publish_many(envelopes, **kw)

    def run_first() -> None:
        first.ingest_many([(later("suspended"), "e3", None)], publish=held_publish)  # G1 v2

    def run_second() -> None:
        try:
            if second == "steward":
                second_svc.merge("G0000000001", "G0000000002", by="erin")  # G1 v3, G2 v2
                second_svc.publish_pending(bus)
            else:
                second_svc.ingest_many([(later("closed"), "e4", None)], publish=bus.publish_many)  # G1 v3
        finally:
            second_progress.set()

    if shape == "two processes":
        second_svc._publication = _Announcing(second_svc._publication, second_progress)
    else:  # the first thread holds the service's own lock to the end of its publish
        first._ensure_index()  # loaded before the race, as a running worker's is
        first._lock = _Announcing(first._lock, second_progress)
    errors: list[BaseException] = []

    def guarded(fn):
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)
                in_publish.set()
                second_progress.set()
        return run

    t1 = threading.Thread(target=guarded(run_first))
    t1.start()
    assert in_publish.wait(SAFETY_S)
    t2 = threading.Thread(target=guarded(run_second))
    t2.start()
    assert second_progress.wait(SAFETY_S)  # published already, or at the lock
    go_on.set()
    t1.join(SAFETY_S)
    t2.join(SAFETY_S)
    assert not errors and not t1.is_alive() and not t2.is_alive()
    assert bus.seqs()["G0000000001"] == [2, 3]
    assert first.pending_events() == 0
