"""Bulk load: batches standardized in worker processes give exactly what in-process loading gives."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from esbhub.mdm import loader
from esbhub.mdm.publication import PublicationLock
from esbhub.mdm.service import MdmService
from esbhub.mdm.standardize import standardize
from esbhub.mdm.store import SourceVersion
from esbhub.mdm.survivorship import values
from esbhub.mdm.synth import generate


def rows(records):
    for i, p in enumerate(records):
        yield f"row{i}", {k: v for k, v in p.model_dump(mode="json", exclude_none=True).items()
                          if k in loader.TOP}


def test_loading_with_standardizing_workers_gives_the_same_golden_records_as_without(tmp_path):
    records = generate(40, seed=5).records
    here = MdmService(f"sqlite:///{tmp_path / 'here.db'}")
    pooled = MdmService(f"sqlite:///{tmp_path / 'pooled.db'}")
    ahead: list[int] = []
    ingest_many = pooled.ingest_many

    def spy(items, *, std=None, **kw):
        ahead.append(sum(1 for v in (std or {}).values() if v.std is not None))  # standardized ahead
        return ingest_many(items, std=std, **kw)

    pooled.ingest_many = spy  # type: ignore[method-assign]
    a = loader.load(here, rows(records), batch=30, workers=0, bulk=False)  # batch by batch (see test_bulk.py)
    b = loader.load(pooled, rows(records), batch=30, workers=1, bulk=False)
    assert ahead[0] == 0 and all(n > 0 for n in ahead[1:]) and len(ahead) > 1  # the worker took batches 2…
    assert a == b and a["records"] == len(records) and not a["errors"]
    assert here.partition_now() == pooled.partition_now()
    assert here.snapshot()["xref"] == pooled.snapshot()["xref"]  # same golden ids too
    assert golden_values(here) == golden_values(pooled)


def golden_values(svc):
    """Golden records without the load's wall-clock times (lineage of undated sources carries them)."""
    out = {}
    for gid, (status, merged_into, members, _attrs, tier) in svc.snapshot()["goldens"].items():
        out[gid] = (status, merged_into, members, values(svc.golden(gid)["attributes"]), tier)
    return out


def test_a_record_sent_to_a_worker_as_its_canonical_json_standardizes_exactly_as_the_record():
    records = generate(300, seed=8).records
    items = [loader._Item(p) for p in records]
    got = loader._standardize_batch(standardize, [(it.envelope_id, it.canon) for it in items])
    assert len(got) == len(records)
    for p, it in zip(records, items, strict=True):
        assert it.envelope_id == loader.envelope_id_for(p)
        std, stdj = got[it.envelope_id]
        assert std == standardize(p) and stdj == standardize(p).model_dump(mode="json")


def test_bulk_load_gives_the_same_store_as_ingesting_the_records_batch_by_batch(tmp_path):
    records = generate(40, seed=6).records
    plain = MdmService(f"sqlite:///{tmp_path / 'plain.db'}")
    for i in range(0, len(records), 25):
        plain.ingest_many([(p, loader.envelope_id_for(p), None) for p in records[i : i + 25]])
    loaded = MdmService(f"sqlite:///{tmp_path / 'loaded.db'}")
    loader.load_parties(loaded, records, batch=25, workers=0, bulk=False)
    assert plain.snapshot()["xref"] == loaded.snapshot()["xref"]
    assert golden_values(plain) == golden_values(loaded)
    with plain.Session() as a, loaded.Session() as b:
        raw = sa.select(SourceVersion.envelope_id, SourceVersion.content_hash, SourceVersion.raw, SourceVersion.std)
        assert sorted(a.execute(raw).all()) == sorted(b.execute(raw).all())


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "batches"])
def test_a_load_publishes_its_events_under_the_publication_lock_in_commit_order_with_other_writers(tmp_path, bulk):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    svc = MdmService(url)
    other = PublicationLock(url)  # what a worker or the API beside the load takes before it writes
    free_while_publishing: list[bool] = []

    def publish(evs):
        got = other.acquire(blocking=False)
        if got:
            other.release()
        free_while_publishing.append(got)

    out = loader.load_parties(svc, generate(30, seed=2).records, batch=20, workers=0, publish=publish,
                              bulk=None if bulk else False)
    assert out["mode"] == ("bulk" if bulk else "batches")
    assert free_while_publishing and not any(free_while_publishing)
    assert other.acquire(blocking=False)  # and released at the end
    other.release()
