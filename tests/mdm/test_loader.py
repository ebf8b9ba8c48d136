"""Bulk load: batches standardized in worker processes give exactly what in-process loading gives."""

from __future__ import annotations

from esbhub.mdm import loader
from esbhub.mdm.service import MdmService
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

    def spy(items, *, std=None):
        ahead.append(len(std or {}))
        return ingest_many(items, std=std)

    pooled.ingest_many = spy  # type: ignore[method-assign]
    a = loader.load(here, rows(records), batch=30, workers=0)
    b = loader.load(pooled, rows(records), batch=30, workers=1)
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
