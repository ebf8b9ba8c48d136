"""WAL checkpoints of the hub's SQLite stores run on a background thread, not inside commits."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from waiting import wait_for

from esbhub.db import make_engine, wal


def _fill(eng: sa.Engine, rows: int, size: int = 2000) -> None:
    with eng.begin() as c:
        c.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
        c.execute(sa.text("INSERT INTO t (v) VALUES (randomblob(:n))"), [{"n": size}] * rows)


def test_commits_leave_checkpoints_to_the_background_thread(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with eng.connect() as c:
        assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == wal.HARD_LIMIT_PAGES
    before = wal.checkpointer.runs
    _fill(eng, 3000)  # ~1500 pages: past SQLite's default of 1000, a commit would have checkpointed itself
    wait_for(lambda: wal.checkpointer.runs > before, what="a background checkpoint")
    path = str((tmp_path / "a.db").resolve())
    busy, frames, copied = wal.checkpointer.checkpoint(path)  # type: ignore[misc]
    assert busy == 0 and frames > 1000 and copied == frames  # all of it copied, nothing left to the writer
    eng.dispose()


def test_wal_starts_over_under_continuous_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal, "RESTART_PAGES", 200)
    eng = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    _fill(eng, 1)
    stop = threading.Event()

    def writer() -> None:  # one transaction after another, no gap for a passive checkpoint to restart in
        while not stop.is_set():
            _fill(eng, 50)

    t = threading.Thread(target=writer)
    restarts = wal.checkpointer.restarts
    t.start()
    try:
        wait_for(lambda: wal.checkpointer.restarts >= restarts + 2, what="two WAL restarts")
    finally:
        stop.set()
        t.join(30)
    with eng.connect() as c:
        pages = c.exec_driver_sql("PRAGMA page_count").scalar()
    _busy, frames, _copied = wal.checkpointer.checkpoint(str((tmp_path / "b.db").resolve()))  # type: ignore[misc]
    assert frames < pages  # the WAL holds what came after its last restart, not every page ever written
    eng.dispose()


def test_a_deleted_database_is_forgotten(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    eng = make_engine(f"sqlite:///{db}")
    _fill(eng, 10)
    path = str(db.resolve())
    assert wal.checkpointer.checkpoint(path) is not None
    eng.dispose()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    assert wal.checkpointer.checkpoint(path) is None
    assert path not in wal.checkpointer._dirty


def test_once_the_hub_closes_its_connections_the_database_file_alone_is_complete(tmp_path: Path) -> None:
    import shutil
    import sqlite3

    db = tmp_path / "d.db"
    eng = make_engine(f"sqlite:///{db}")
    _fill(eng, 500)
    eng.dispose()  # the last connection to close folds the WAL into the file (the checkpointer holds none)
    wait_for(lambda: not Path(f"{db}-wal").exists(), what="the WAL folded into the database file")
    shutil.copy(db, tmp_path / "copy.db")  # a plain copy, without -wal
    con = sqlite3.connect(tmp_path / "copy.db")
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 500
    con.close()


def test_a_closed_database_is_left_alone_no_wal_files_reappear(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    eng = make_engine(f"sqlite:///{db}")
    _fill(eng, 10)
    eng.dispose()  # the hub's last connection: the WAL is folded in and removed
    wait_for(lambda: not Path(f"{db}-wal").exists(), what="the WAL removed on the last close")
    assert wal.checkpointer.checkpoint(str(db.resolve())) is None
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
