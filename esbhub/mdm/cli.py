"""``esbhub mdm …``: bulk load, re-match, explain a pair, export the xref, train the model.

Bad input is one ``Error: …`` line (or a few naming each problem) and exit 1 — the file and line,
the table and database, the reference or the field, and why; never a traceback. Exit 2 is
click's: the command line itself is wrong (a FILE that does not exist, an option's value or
combination). ``esbhub mdm load`` also exits 1 when rows were reported and skipped.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import click


class MdmGroup(click.Group):
    """Every error of the hub's own tree (:mod:`esbhub.errors`) a command does not handle itself
    ends as its message and exit 1, like the commands' own errors — not as a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from esbhub.errors import EsbhubError

        try:
            return super().invoke(ctx)
        except EsbhubError as exc:
            raise click.ClickException(str(exc)) from None


def _settings() -> Any:
    ctx = click.get_current_context()
    obj = ctx.find_root().obj
    if obj is not None and hasattr(obj, "settings"):
        return obj.settings
    from esbhub.config import process_settings

    return process_settings()


def _service() -> Any:
    from esbhub.mdm.service import service_for

    return service_for(_settings())


def _broker() -> Any:
    from esbhub.bus.broker import create_broker

    s = _settings()
    b = create_broker(s.effective_broker_url, exchange=s.exchange)
    b.connect()
    return b


@click.group("mdm", cls=MdmGroup)
def mdm() -> None:
    """Master data: golden customer records, matching, steward work."""


@mdm.command("load")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--system", "default_system", help="source_system for rows that have no such column.")
@click.option("--sql", "sql_url", help="Load from a SQL table at this SQLAlchemy URL (with --table).")
@click.option("--table", help="Table name for --sql.")
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 100_000),
              help="Records per transaction (per staging step of an initial load).")
@click.option("--batches", "force_batches", is_flag=True,
              help="Load batch by batch even into an empty store (default there: the whole load set at a "
                   "time, in one transaction).")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Processes standardizing the next batch while this one is stored "
                   "[default: one per spare CPU, at most 3; 0: none].")
@click.option("--via-bus", is_flag=True,
              help="Publish party.v1 envelopes to the bus for the MDM worker instead of ingesting here.")
@click.option("--publish/--no-publish", default=True, show_default=True,
              help="Publish the resulting party.golden.* events to the bus (direct mode).")
def load_cmd(files: tuple[Path, ...], default_system: str | None, sql_url: str | None, table: str | None,
             batch: int, force_batches: bool, workers: int | None, via_bus: bool, publish: bool) -> None:
    """Load CSV / TSV / Parquet / party.v1 JSON-lines FILES (or a SQL table) through the MDM pipeline.

    Columns are party.v1 field names (see esbhub.mdm.loader); rows that do not validate are
    reported with their file and line and skipped. Loading the same data again changes nothing.
    Every source is checked before anything loads (file type, header or table columns): a bad
    one stops the load with nothing stored. A .tsv file is tab-separated; other text files are
    separated by what their header line holds (comma, tab, ';' or '|').
    Into an empty store the whole load is one transaction, clustered once (esbhub.mdm.bulk);
    otherwise it goes in transactions of --batch records.
    """
    from esbhub.errors import EsbhubError
    from esbhub.mdm import loader

    if not files and not sql_url:
        raise click.UsageError("give FILE… or --sql URL --table NAME")
    if sql_url and not table:
        raise click.UsageError("--sql needs --table")
    if table and not sql_url:
        raise click.UsageError("--table needs --sql URL")
    try:  # every source's type, header or table, before anything is loaded
        sources = [loader.iter_file(f, default_system) for f in files]
        if sql_url:
            sources.append(loader.iter_sql(sql_url, table or "", default_system=default_system))
    except (loader.SourceError, OSError) as exc:
        raise click.ClickException(f"{exc}; nothing was loaded") from None

    def rows() -> Any:
        for src in sources:
            yield from src

    try:
        if via_bus:
            result = _load_via_bus(rows(), default_system, batch)
        else:
            broker = _publisher() if publish else None
            try:
                result = loader.load(_service(), rows(), default_system=default_system, batch=batch,
                                     publish=_publishing(broker) if broker is not None else None, workers=workers,
                                     bulk=False if force_batches else None)
            finally:
                if broker is not None:
                    broker.close()
    except _PublishFailed as exc:
        raise click.ClickException(
            f"publishing the load's party.golden.* events failed: {exc}; the records loaded up to there stay "
            "stored, the events not yet published are not sent later (a direct load keeps no outbox)") from None
    except (RuntimeError, ValueError, OSError, EsbhubError) as exc:
        done = "the records published before it stay published" if via_bus else \
            "into an empty store nothing was stored (one transaction); else the batches before it stay " \
            "stored and loading again skips them"
        raise click.ClickException(f"{exc}; the load stopped there: {done}") from None
    for e in result["errors"][:50]:
        click.echo(f"{e['where']}: {e['message']}", err=True)
    click.echo(json.dumps({k: (len(v) if k == "errors" else v) for k, v in result.items()}, ensure_ascii=False))
    if result["errors"]:
        sys.exit(1)


class _PublishFailed(Exception):
    """The broker refused a direct load's events after their records were stored."""


def _publishing(broker: Any) -> Any:
    def publish(events: list[Any]) -> None:
        try:
            broker.publish_many(events)
        except Exception as exc:
            raise _PublishFailed(f"{type(exc).__name__}: {exc}") from exc

    return publish


def _publisher() -> Any:
    """The broker a direct load publishes its events to, connected before anything is loaded."""
    from esbhub.errors import EsbhubError

    try:
        return _broker()
    except EsbhubError as exc:
        raise click.ClickException(f"{exc}; nothing was loaded (start the broker, or load with --no-publish: "
                                   "the load's party.golden.* events are then not published)") from None


def _load_via_bus(rows: Any, default_system: str | None, batch: int) -> dict[str, Any]:
    from esbhub.bus.envelope import Envelope
    from esbhub.errors import EsbhubError
    from esbhub.mdm import loader

    errors: list[loader.RowError] = []
    try:
        broker = _broker()
    except EsbhubError as exc:
        raise click.ClickException(f"{exc}; nothing was published") from None
    n = 0
    buf: list[Envelope] = []
    try:
        for p in loader.parties(rows, default_system, errors):
            buf.append(Envelope.create("party.v1", p.model_dump(mode="json", exclude_none=True),
                                       source=f"mdm-load:{p.source_system}", id=None))
            n += 1
            if len(buf) >= batch:
                broker.publish_many(buf)
                buf = []
        if buf:
            broker.publish_many(buf)
    finally:
        broker.close()
    return {"records": n, "published": n, "errors": [e.__dict__ for e in errors]}


@mdm.command("rematch")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="MatchModel JSON to match with, e.g. what 'esbhub mdm train' wrote (default: the hub's model, "
              "at mdm.model_path).")
def rematch_cmd(model_path: Path | None) -> None:
    """Re-run matching over all records and re-cluster (steward decisions and golden ids stand).

    The model it matched with becomes the hub's: saved at mdm.model_path (default
    DATA_DIR/mdm_model.json) and recorded in the store, in the rematch's transaction. Running MDM
    processes (workers, the API) score their next records with it, without a restart; one whose
    mdm.model_path does not hold it refuses to score and says so.

    The changed golden records' events are written to the MDM outbox with the rematch and then
    published; if the broker is down the rematch stands, the events stay in the outbox and
    `esbhub mdm publish-pending` (or an MDM worker) sends them later.
    """
    from esbhub.errors import ConfigError

    model = None
    if model_path:
        from esbhub.mdm.match import MatchModel

        try:
            model = MatchModel.from_file(model_path)
        except ConfigError as exc:
            raise _not_rematched(exc, "--model: ") from None
    svc = _service()
    try:
        events = svc.rematch(model)
    except ConfigError as exc:  # the hub's model file unreadable, or mdm.model_path not writable
        raise _not_rematched(exc) from None
    published, pending, failure = _publish_outbox(svc)
    click.echo(json.dumps({"changed_golden_records": len(events), "events_published": published,
                           "events_pending": pending, "model": svc.store_model()}))
    if failure:
        raise click.ClickException(
            f"the rematch committed ({len(events)} golden records changed), but publishing its events failed: "
            f"{failure}. They stay in the MDM outbox ({pending} pending) and go out with "
            "'esbhub mdm publish-pending' once the broker is back (an MDM worker also sends them).")


def _not_rematched(exc: Any, prefix: str = "") -> click.ClickException:
    """A model error that stopped a rematch before any work, as the hub's errors print (details
    indented below)."""
    from esbhub.errors import ConfigError

    return click.ClickException(str(ConfigError(f"{prefix}{exc.message}; nothing was re-matched", details=exc.details)))


def _publish_outbox(svc: Any) -> tuple[int, int, str | None]:
    """Publish every event in the MDM outbox (:meth:`MdmService.publish_pending` goes on until
    it is empty): (published, still pending, why publishing failed or None). An empty outbox
    needs no broker."""
    before = svc.pending_events()
    if not before:
        return 0, 0, None
    try:
        broker = _broker()
        try:
            published = svc.publish_pending(broker)
        finally:
            broker.close()
    except Exception as exc:  # noqa: BLE001 - whatever the broker raises, the events stay in the outbox
        pending = svc.pending_events()  # the pages published before the failure are marked published
        return max(0, before - pending), pending, f"{type(exc).__name__}: {exc}"
    return published, svc.pending_events(), None


@mdm.command("publish-pending")
def publish_pending_cmd() -> None:
    """Publish the events left in the MDM outbox (a rematch's or a steward action's, while the broker was down)."""
    published, pending, failure = _publish_outbox(_service())
    click.echo(json.dumps({"events_published": published, "events_pending": pending}))
    if failure:
        raise click.ClickException(f"publishing failed: {failure}; {pending} event(s) stay in the MDM outbox")


@mdm.command("explain")
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def explain_cmd(a: str, b: str, as_json: bool) -> None:
    """Per-field match evidence for A and B (source keys 'system:id' or golden ids)."""
    from esbhub.mdm.service import NotFound

    try:
        r = _service().explain(a, b)
    except NotFound as exc:
        raise click.ClickException(f"{exc.field.upper() + ': ' if exc.field else ''}{exc}") from None
    if as_json:
        click.echo(json.dumps(r, ensure_ascii=False, indent=2))
        return
    click.echo(f"{r['a']}  vs  {r['b']}")
    click.echo(f"weight {r['weight']:+.2f}   probability {r['probability']:.4f}   decision {r['decision']}"
               + (f"   cannot-link: {r['cannot_link']}" if r.get("cannot_link") else ""))
    click.echo(f"{'field':<14}{'level':<20}{'weight':>8}   a | b")
    for e in r["evidence"]:
        click.echo(f"{e['field']:<14}{e['level']:<20}{e['weight']:>+8.2f}   {e.get('a')} | {e.get('b')}")


@mdm.command("export-xref")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="CSV file (default: stdout).")
def export_xref_cmd(out: Path | None) -> None:
    """Every source key with its golden id, as CSV."""
    try:
        fh = open(out, "w", encoding="utf-8", newline="") if out else sys.stdout  # noqa: SIM115
    except OSError as exc:
        raise click.ClickException(f"--out: cannot write '{out}': {exc.strerror}") from None
    try:
        w = csv.DictWriter(fh, fieldnames=["source_system", "source_id", "golden_id", "version", "deleted"])
        w.writeheader()
        for row in _service().export_xref():
            w.writerow(row)
    finally:
        if out:
            fh.close()


@mdm.command("train")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the candidate model [beside mdm.model_path: DATA_DIR/mdm_model.candidate.json by "
              "default]; not mdm.model_path itself, which only a rematch changes.")
@click.option("--max-records", default=200_000, show_default=True, type=click.IntRange(10),
              help="Train on at most this many current source records.")
@click.option("--term-frequencies", is_flag=True,
              help="Also count how many records hold each core name / family name, so that agreeing on a "
              "common one weighs less (off: record counts include each company's own duplicates, which "
              "cost recall on the synthetic set — docs/benchmarks.md).")
def train_cmd(out: Path | None, max_records: int, term_frequencies: bool) -> None:
    """Learn m/u by EM from the stored records (no labels); refine with steward decisions if any.

    Writes a candidate model and changes nothing the hub scores with: apply it to every record
    with `esbhub mdm rematch --model FILE`, which also makes it the hub's model (mdm.model_path).
    """
    import sqlalchemy as sa

    from esbhub.mdm import match
    from esbhub.mdm.standardize import StdParty
    from esbhub.mdm.store import Constraint, Xref

    svc = _service()
    applied = Path(svc.settings.model_path)  # mdm.model_path, by default DATA_DIR/mdm_model.json
    path = Path(out) if out else candidate_path(applied)
    if path.resolve() == applied.resolve():
        raise click.BadParameter(
            f"'{path}' is mdm.model_path, the model the hub scores with: a trained model is a candidate until "
            f"'esbhub mdm rematch --model FILE' applies it to every record (and saves it there); write it elsewhere "
            f"(default {candidate_path(applied)})", param_hint="'--out'")
    with svc.Session() as s:
        rows = s.execute(sa.select(Xref.source_system, Xref.source_id, Xref.std)
                         .where(Xref.deleted.is_(False)).limit(max_records)).all()
        stds = {f"{a}:{b}": StdParty.model_validate(d) for a, b, d in rows}
        labels = [
            (stds[c.a_key], stds[c.b_key], c.kind == "must")
            for c in s.execute(sa.select(Constraint).where(Constraint.active.is_(True))).scalars()
            if c.a_key in stds and c.b_key in stds
        ]
    if len(stds) < 10:
        raise click.ClickException(f"only {len(stds)} records stored: load data first")
    model = match.train_em(list(stds.values()), term_frequencies=term_frequencies)
    if labels:
        model = match.refine_with_labels(model, labels)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(model.model_dump_json(indent=2), encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"{'--out: ' if out else ''}cannot write the model to '{path}': "
                                   f"{exc.strerror}; the training is lost") from None
    click.echo(json.dumps({"records": len(stds), "labels": len(labels), "model": str(path),
                           "next": f"esbhub mdm rematch --model {path}"}))


def candidate_path(applied: Path) -> Path:
    """Where ``esbhub mdm train`` writes by default: beside the hub's model (``mdm_model.json`` →
    ``mdm_model.candidate.json``), never over it."""
    return applied.with_name(f"{applied.stem}.candidate{applied.suffix or '.json'}")
