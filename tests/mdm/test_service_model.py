"""The match model across processes: a rematch applies it to the store, every writer follows it.

A second :class:`MdmService` on the same database stands for another process (a bus worker, the
API): it has its own matcher and index, and learns about the rematch only through the store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from esbhub.errors import CircuitOpen, ConfigError
from esbhub.mdm.match import MatchModel
from esbhub.mdm.service import MdmService, ModelMismatch, _ModelFile
from esbhub.mdm.settings import MdmSettings
from esbhub.mdm.store import AppliedModel, SourceVersion
from mdm.fakes import db_fixture_url, party, uscc

U1 = uscc(1)

BOTH = pytest.mark.parametrize("url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)

STRICT = MatchModel(merge_threshold=1.0, review_threshold=1.0)
"""A model under which no pair links (probabilities stay below 1): what the defaults merge, it keeps apart."""


@pytest.fixture(params=["sqlite"])
def url(request, tmp_path, unique) -> str:
    """SQLite by default; tests marked BOTH also run on PostgreSQL."""
    return db_fixture_url(request, tmp_path, unique)


@pytest.fixture
def settings(tmp_path) -> MdmSettings:
    return MdmSettings(model_path=tmp_path / "models" / "mdm_model.json")


def crm1():
    return party("crm", "1", "深圳市华信科技有限公司", uscc=U1, phones=["0755-88886666"], city="深圳",
                 address="广东省深圳市南山区科技园路1号")


def bill1():
    return party("billing", "A1", "华信科技(深圳)有限责任公司", uscc=U1, phones=["0755-88886666"], city="深圳")


def crm2():
    return party("crm", "2", "深圳华信科技有限公司", uscc=U1, phones=["0755-88886666"], city="深圳")


@BOTH
def test_a_second_service_scores_its_next_ingest_with_the_model_a_rematch_applied_without_a_restart(url, settings):
    worker = MdmService(url, settings=settings)
    worker.ingest(crm1(), "e1")
    worker.ingest(bill1(), "e2")
    assert worker.partition_now() == {frozenset({"crm:1", "billing:A1"})}  # the defaults merge them
    index = worker.matcher

    admin = MdmService(url, settings=settings)  # `esbhub mdm rematch --model strict.json`
    admin.rematch(STRICT)
    assert admin.partition_now() == {frozenset({"crm:1"}), frozenset({"billing:A1"})}

    worker.ingest(crm2(), "e3")  # the same company again: the defaults would merge it
    assert worker.matcher is index and len(index) == 3  # the index stayed; only the model changed
    assert worker.matcher.model == STRICT
    assert worker.partition_now() == {frozenset({"crm:1"}), frozenset({"billing:A1"}), frozenset({"crm:2"})}
    assert admin.rematch() == []  # the worker's new links are the ones the rematched model makes
    assert worker.explain("crm:1", "crm:2")["decision"] == "no_match"


def test_the_model_a_rematch_applied_is_saved_where_a_fresh_process_loads_it(url, settings):
    first = MdmService(url, settings=settings)
    first.ingest(crm1(), "e1")
    first.ingest(bill1(), "e2")
    first.rematch(STRICT)

    path = Path(settings.model_path)
    assert MatchModel.from_file(path) == STRICT
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written through a temp file, renamed
    stored = first.store_model()
    assert stored is not None and stored["fingerprint"] == STRICT.fingerprint()
    assert stored["applied_by"] == "rematch" and stored["path"] == str(path)

    restarted = MdmService(url, settings=settings)  # a process started after the rematch
    assert restarted.model_fingerprint == stored["fingerprint"]
    restarted.ingest(crm2(), "e3")
    assert len(restarted.partition_now()) == 3


def test_a_writer_whose_model_file_is_not_the_stores_refuses_to_score_and_says_why(url, settings):
    admin = MdmService(url, settings=settings)
    admin.ingest(crm1(), "e1")
    admin.rematch(STRICT)
    applied = STRICT.fingerprint()[:12]
    path = Path(settings.model_path)
    other = MatchModel(merge_threshold=0.9)
    path.write_text(other.to_json(), encoding="utf-8")  # e.g. `esbhub mdm train --out` over the hub's model

    worker = MdmService(url, settings=settings)
    with pytest.raises(ModelMismatch) as err:
        worker.ingest(bill1(), "e2")
    msg = err.value.message
    assert f"the MDM store's links were scored with match model {applied} (applied by rematch at " in msg
    assert f"saved to {path}), but mdm.model_path {path} holds another model, {other.fingerprint()[:12]}" in msg
    assert f"put the store's model back at {path}, or apply the one there to every record with " \
           f"'esbhub mdm rematch --model {path}'" in msg
    assert err.value.details[0].loc == "mdm.model_path" and err.value.details[0].file == str(path)
    assert isinstance(err.value, CircuitOpen)  # a bus worker holds the subscription: no message dead-lettered
    with worker.Session() as s:  # nothing was scored or stored
        assert s.execute(sa.select(SourceVersion).where(SourceVersion.source_id == "A1")).first() is None
    with pytest.raises(ModelMismatch):
        worker.merge("crm:1", "crm:1", by="alice")  # a steward action too

    path.unlink()
    with pytest.raises(ModelMismatch, match=f"there is no file at mdm.model_path {path} "
                                            r"\(it would score with the engine's defaults, "):
        worker.ingest(bill1(), "e2")
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ModelMismatch, match=f"mdm.model_path {path} is not a model it can read"):
        worker.ingest(bill1(), "e2")

    path.write_text(STRICT.to_json(), encoding="utf-8")  # the store's model back: the next try scores
    worker.ingest(bill1(), "e2")
    assert worker.partition_now() == {frozenset({"crm:1"}), frozenset({"billing:A1"})}


def test_the_first_write_records_the_model_it_scored_with(url, settings):
    svc = MdmService(url, settings=settings)
    assert svc.store_model() is None
    svc.ingest(crm1(), "e1")
    stored = svc.store_model()
    assert stored is not None and stored["fingerprint"] == MatchModel().fingerprint()
    assert stored["applied_by"] == "first write" and stored["path"] is None  # no file: the engine's defaults
    Path(settings.model_path).parent.mkdir(parents=True)
    Path(settings.model_path).write_text(STRICT.to_json(), encoding="utf-8")  # a candidate put there by hand
    with pytest.raises(ModelMismatch, match="holds another model"):
        MdmService(url, settings=settings).ingest(bill1(), "e2")


def test_a_rematch_that_does_not_commit_leaves_the_model_file_and_the_store_as_they_were(url, settings, monkeypatch):
    svc = MdmService(url, settings=settings)
    svc.ingest(crm1(), "e1")
    svc.ingest(bill1(), "e2")
    svc.rematch(STRICT)
    path = Path(settings.model_path)
    before, partition = path.read_bytes(), svc.partition_now()
    install = _ModelFile.install

    def install_then_fail(self: _ModelFile) -> None:
        install(self)
        raise OSError("disk gone")

    monkeypatch.setattr(_ModelFile, "install", install_then_fail)
    with pytest.raises(OSError, match="disk gone"):
        svc.rematch(MatchModel())
    assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == [path.name]
    assert svc.store_model()["fingerprint"] == STRICT.fingerprint() and svc.partition_now() == partition
    with svc.Session() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(AppliedModel)).scalar() == 2  # first write, rematch
    svc.ingest(crm2(), "e3")  # still scores with the store's model
    assert len(svc.partition_now()) == 3


def test_a_rematch_whose_model_path_cannot_be_written_stops_before_any_work(url, tmp_path):
    (tmp_path / "file").write_text("")
    svc = MdmService(url, settings=MdmSettings(model_path=tmp_path / "file" / "m.json"))
    svc.ingest(crm1(), "e1")
    svc.ingest(bill1(), "e2")
    with pytest.raises(ConfigError, match=f"cannot write the match model to {tmp_path / 'file' / 'm.json'} "
                                          r"\(mdm.model_path\): "):
        svc.rematch(STRICT)
    assert svc.partition_now() == {frozenset({"crm:1", "billing:A1"})}
    assert svc.store_model()["applied_by"] == "first write"
