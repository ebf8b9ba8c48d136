"""Bulk initial load: CSV, Parquet, ``party.v1`` JSON lines or a SQL table → ``party.v1`` records.

A JSON-lines file (``.jsonl`` / ``.ndjson``) holds one ``party.v1`` record per line, nested
fields (addresses, phones, contacts, attributes) as the schema has them.

Rows are flat; columns named like ``party.v1`` fields map onto them:

``source_system`` ``source_id`` ``kind`` ``name`` ``name_en`` ``uscc`` ``org_code`` ``id_number``
``parent_source_id`` ``province`` ``city`` ``status`` ``source_updated_at`` ``deleted``
``address`` (→ one registered address) · ``phones`` / ``phone`` and ``emails`` / ``email``
(several separated by ``;`` or ``,``) · ``billing_account`` ``parent_billing_account``
``monthly_revenue`` ``bank_account`` ``bank_name`` ``account_manager`` ``industry``
``circuit_ids`` (``;``-separated) → ``attributes``; every other non-empty column →
``attributes.extra``. A row that does not validate is reported with its row number and
skipped; the load goes on.

A delimited text file (``.csv``, ``.tsv``, ``.txt``) is UTF-8; ``.tsv`` is tab-separated, the
others are separated by whichever of ``,`` tab ``;`` ``|`` their header line holds most
(comma on a tie). A row is reported (file and line) and skipped if it is not UTF-8, not
CSV (e.g. a NUL byte) or has more values than the header has columns.

A source that cannot load at all raises :class:`SourceError` before any row is read: an unknown
file type, a file that is not Parquet, an empty file, a header (or table) without a column every
row needs (``source_system`` unless a default system is given, ``source_id``, ``name``), a SQL
table or database that does not exist.

Each record gets a deterministic envelope id (hash of its content), so loading the same file
twice changes nothing (the MDM also ignores unchanged source versions).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import functools
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog
from pydantic import ValidationError

from esbhub.errors import InvalidMessage
from esbhub.mdm.service import Prepared
from esbhub.mdm.standardize import _std_party
from esbhub.schemas.party import Party

log = structlog.get_logger("esbhub.mdm.loader")

TOP = {"source_system", "source_id", "kind", "name", "name_en", "uscc", "org_code", "id_number", "parent_source_id",
       "province", "city", "status", "source_updated_at", "deleted"}
ATTRS = {"billing_account", "parent_billing_account", "monthly_revenue", "bank_account", "bank_name",
         "account_manager", "industry"}
SPECIAL = {"address", "phones", "phone", "emails", "email", "circuit_ids"}


@dataclass
class RowError:
    where: str
    message: str


class SourceError(ValueError):
    """A load source (file or SQL table) that cannot load at all; the message names it (file and
    line, or table and database) and says why. Raised before any of its rows is read, so a load
    that names a bad source stores nothing."""


REQUIRED = ("source_system", "source_id", "name")
"""Columns a flat row cannot validate without (``source_system`` may come as a default)."""


def check_columns(where: str, columns: Iterable[str | None], default_system: str | None) -> None:
    """Raise :class:`SourceError` if a header or table lacks a column every row needs: else each
    of its rows would be reported alone with the same 'Field required'."""
    have = [c.strip() for c in columns if c is not None]
    missing = [c for c in REQUIRED if c not in have and not (c == "source_system" and default_system)]
    if not missing:
        return
    shown = ", ".join(repr(c) for c in have[:20]) + (", …" if len(have) > 20 else "")
    hint = " (or give a default system: --system)" if "source_system" in missing else ""
    raise SourceError(f"{where}: no column {' or '.join(repr(c) for c in missing)}{hint}; "
                      f"the columns are: {shown or 'none'}")


class Unreadable:
    """A row its file holds but that could not be read as one (not UTF-8, not CSV): reported with
    its line like a row that does not validate, and the load goes on."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def _split(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list):
        return [str(x).strip() for x in v if str(x).strip()]
    return [x.strip() for x in str(v).replace(",", ";").split(";") if x.strip()]


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


class PartyJSON:
    """One ``party.v1`` record as JSON (a line of a JSON-lines file), nested fields and all."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text


def row_to_party(row: dict[str, Any] | PartyJSON | Unreadable, default_system: str | None = None) -> Party:
    """One flat row (or a :class:`PartyJSON` record) → a validated Party (raises ValidationError / ValueError)."""
    if isinstance(row, Unreadable):
        raise ValueError(row.why)
    if isinstance(row, PartyJSON):
        try:
            obj = orjson.loads(row.text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"a party.v1 record is a JSON object, not {type(obj).__name__}")
        if default_system and not obj.get("source_system"):
            obj["source_system"] = default_system
        return Party.model_validate(obj)
    if row.get(None):  # type: ignore[call-overload]  # csv.DictReader's place for values beyond the header
        spill = row[None]  # type: ignore[index]
        raise ValueError(f"{len(spill)} value(s) more than the header has columns ({', '.join(map(repr, spill[:3]))}"
                         f"{', …' if len(spill) > 3 else ''}): a separator inside an unquoted value?")
    data: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for k, v in row.items():
        if k is None or _empty(v):
            continue
        k = k.strip()
        if k in TOP:
            data[k] = v.strip() if isinstance(v, str) else v
        elif k in ATTRS:
            attrs[k] = str(v).strip()
        elif k in SPECIAL:
            continue
        else:
            extra[k] = v if isinstance(v, (int, float, bool)) else str(v)
    if "deleted" in data and isinstance(data["deleted"], str):
        data["deleted"] = data["deleted"].lower() in ("1", "true", "yes", "y")
    data.setdefault("source_system", default_system)
    if row.get("address") and not _empty(row.get("address")):
        data["addresses"] = [{"kind": "registered", "text": str(row["address"]).strip()}]
    phones = _split(row.get("phones")) + _split(row.get("phone"))
    if phones:
        data["phones"] = [{"number": p} for p in dict.fromkeys(phones)]
    emails = _split(row.get("emails")) + _split(row.get("email"))
    if emails:
        data["emails"] = list(dict.fromkeys(emails))
    circuits = _split(row.get("circuit_ids"))
    if circuits:
        attrs["circuit_ids"] = circuits
    if extra:
        attrs["extra"] = extra
    if attrs:
        data["attributes"] = attrs
    for k in ("source_id",):
        if k in data and not isinstance(data[k], str):
            data[k] = str(data[k])
    return Party.model_validate(data)


def envelope_id_for(p: Party) -> str:
    """Deterministic id of a loaded record: same content → same id (idempotent re-load)."""
    from esbhub.mdm.service import content_hash

    return _envelope_id(content_hash(p.model_dump(mode="json", exclude_none=True))[0])


def _envelope_id(content_hash: str) -> str:
    return "load-" + content_hash[:40]



CSV_DELIMITERS = (",", "\t", ";", "|")
"""Separators a delimited text file may use; its header line decides (:func:`delimiter_of`)."""

FILE_TYPES = ".csv .tsv .txt (delimited text), .parquet .pq (Parquet), .jsonl .ndjson (party.v1 JSON lines)"


def delimiter_of(path: Path, header: str) -> str:
    """A ``.tsv`` file's separator is a tab; any other's is the one its header line holds most
    (a column name holds none of them), a comma on a tie — a tab-separated file named ``.csv``
    or ``.txt`` is read as one too."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    return max(CSV_DELIMITERS, key=lambda d: (header.count(d), d == ","))


class _Lines:
    """A text file's lines, each decoded on its own so that a byte that is not ``encoding`` is
    pinned to its line: that line comes out with replacement characters and :attr:`bad` gets its
    number and why (the row spanning it is then reported, not loaded). :attr:`n` is the number
    of the last line read (the csv module's ``line_num`` lags behind it when a row fails).
    ``encoding`` must keep ``\\n`` a byte of its own (UTF-8, GB18030, … — not UTF-16)."""

    def __init__(self, raw_lines: Iterable[bytes], encoding: str) -> None:
        self.raw_lines, self.encoding, self.n = raw_lines, encoding, 0
        self.bad: dict[int, str] = {}

    def __iter__(self) -> Iterator[str]:
        enc = self.encoding
        name = "UTF-8" if enc.lower().replace("_", "-") in ("utf-8", "utf-8-sig", "utf8") else enc
        for raw in self.raw_lines:
            self.n += 1
            try:
                yield raw.decode(enc)
            except UnicodeDecodeError as exc:
                self.bad[self.n] = (f"not {name} text: byte {exc.start + 1} of the line is "
                                    f"{raw[exc.start:exc.start + 1]!r} ({exc.reason})")
                yield raw.decode(enc, errors="replace")


def _cr_lines(fh: Any, size: int = 1 << 16) -> Iterator[bytes]:
    """The lines of a file whose lines end with CR alone, each with its CR."""
    rest = b""
    for chunk in iter(lambda: fh.read(size), b""):
        *done, rest = (rest + chunk).split(b"\r")
        for line in done:
            yield line + b"\r"
    if rest:
        yield rest


def iter_csv(path: Path, encoding: str = "utf-8-sig", default_system: str | None = None,
             ) -> Iterator[tuple[str, dict[str, Any] | Unreadable]]:
    """The rows of a delimited text file, each with ``file:line``. The header is read here, at
    once: :class:`SourceError` if the file is empty, its header is not text or lacks a column
    every row needs (:func:`check_columns`)."""
    fh = open(path, "rb")  # noqa: SIM115 - handed on to the row generator, which closes it
    try:
        first = fh.readline()
        fh.seek(0)
        header = first.decode(encoding, errors="replace")
        cr_only = b"\r" in first.removesuffix(b"\n").removesuffix(b"\r")  # lines ended by CR alone (old Mac)
        lines = _Lines(_cr_lines(fh) if cr_only else fh, encoding)
        reader = csv.DictReader(lines, delimiter=delimiter_of(path, header))
        try:
            columns = reader.fieldnames
        except csv.Error as exc:
            raise SourceError(f"{path}:1: the header line is not CSV: {exc}") from None
        if columns is None:
            raise SourceError(f"{path}: empty file: the first line must name the columns")
        if 1 in lines.bad:
            raise SourceError(f"{path}:1: the header line is {lines.bad[1]}")
        check_columns(f"{path}:1", columns, default_system)
    except BaseException:
        fh.close()
        raise
    return _csv_rows(path, fh, reader, lines)


def _csv_rows(path: Path, fh: Any, reader: csv.DictReader[str], lines: _Lines,
              ) -> Iterator[tuple[str, dict[str, Any] | Unreadable]]:
    """Rows by the line they end on (a row's own line, but for a quoted value spanning lines)."""
    with fh:
        end = lines.n
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # the reader starts afresh at the next line
                end = lines.n
                yield f"{path}:{end}", Unreadable(f"not CSV: {exc}")
                continue
            start, end = end + 1, lines.n
            bad = lines.bad
            broken = next((n for n in range(start, end + 1) if n in bad), None) if bad else None
            if broken is not None:
                yield f"{path}:{broken}", Unreadable(bad[broken])
            else:
                yield f"{path}:{end}", row


def iter_parquet(path: Path, batch_size: int = 10_000, default_system: str | None = None,
                 ) -> Iterator[tuple[str, dict[str, Any]]]:
    """The rows of a Parquet file, each with ``file#rowN``; the file's schema is read here, at once
    (:class:`SourceError` if it is not Parquet or lacks a column every row needs)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # a dependency of esbhub, imported only when Parquet is read (it is big); an install left it out
        raise SourceError(f"{path}: reading Parquet needs pyarrow, a dependency of esbhub: pip install 'pyarrow>=15'"
                          ) from None
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"{path}: not a Parquet file ({exc})") from None
    check_columns(str(path), pf.schema_arrow.names, default_system)
    return _parquet_rows(path, pf, batch_size)


def _parquet_rows(path: Path, pf: Any, batch_size: int) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa

    n = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                n += 1
                yield f"{path}#row{n}", row
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"{path}: cannot read beyond row {n} ({exc})") from None


def shown_url(url: str) -> str:
    """A database URL fit for a message: its password masked (only the scheme if it does not parse)."""
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return url.split("://", 1)[0] + "://…"


def _why_db(exc: Exception, url: str) -> str:
    """The driver's own first line for a database error, without the URL's password."""
    import sqlalchemy as sa

    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    msg = lines[0] if lines else type(exc).__name__
    with contextlib.suppress(sa.exc.ArgumentError, ValueError):
        pw = sa.engine.make_url(url).password
        if pw:
            msg = msg.replace(str(pw), "***")
    return msg


def iter_sql(url: str, table: str, batch_size: int = 10_000, default_system: str | None = None,
             ) -> Iterator[tuple[str, dict[str, Any]]]:
    """The rows of a SQL table, each with ``table#rowN``. The table is looked up here, at once:
    :class:`SourceError` naming the table and the database (password masked) if the URL does
    not parse, the database or the table does not exist, it cannot be reached, or the table
    lacks a column every row needs."""
    import sqlalchemy as sa

    from esbhub.db import make_engine

    db = shown_url(url)
    try:
        u = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise SourceError(f"--sql {db}: not a database URL (e.g. postgresql+psycopg://user@host/db, "
                          "sqlite:///path/file.db)") from None
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:" \
            and "mode=memory" not in url and not Path(u.database).is_file():
        raise SourceError(f"--sql {db}: no database file '{u.database}'")  # not one made empty by looking
    try:
        eng = make_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise SourceError(f"--sql {db}: cannot open this database ({exc})") from None
    try:
        t = sa.Table(table, sa.MetaData(), autoload_with=eng)
        check_columns(f"table '{table}' in {db}", t.columns.keys(), default_system)
    except sa.exc.NoSuchTableError:
        known = _table_names(eng)
        eng.dispose()
        raise SourceError(f"no table '{table}' in {db}"
                          + (f" (its tables: {', '.join(known[:20])}{', …' if len(known) > 20 else ''})" if known else "")
                          ) from None
    except sa.exc.SQLAlchemyError as exc:
        eng.dispose()
        raise SourceError(f"cannot read table '{table}' in {db}: {_why_db(exc, url)}") from None
    except BaseException:
        eng.dispose()
        raise
    return _sql_rows(url, db, eng, t, batch_size)


def _table_names(eng: Any) -> list[str]:
    import sqlalchemy as sa

    try:
        return sorted(sa.inspect(eng).get_table_names())
    except sa.exc.SQLAlchemyError:
        return []


def _sql_rows(url: str, db: str, eng: Any, t: Any, batch_size: int) -> Iterator[tuple[str, dict[str, Any]]]:
    import sqlalchemy as sa

    n = 0
    try:
        with eng.connect() as conn:
            res = conn.execution_options(stream_results=True, yield_per=batch_size).execute(sa.select(t))
            for n, row in enumerate(res.mappings(), start=1):  # noqa: B007 - n is read after the loop fails
                yield f"{t.name}#row{n}", dict(row)
    except sa.exc.SQLAlchemyError as exc:
        raise SourceError(f"cannot read table '{t.name}' in {db} beyond row {n}: {_why_db(exc, url)}") from None
    finally:
        eng.dispose()


def iter_jsonl(path: Path) -> Iterator[tuple[str, PartyJSON]]:
    """``party.v1`` records, one JSON object per line (blank lines skipped)."""
    with open(path, "rb") as fh:
        for i, line in enumerate(fh, start=1):
            if line.strip():
                yield f"{path}:{i}", PartyJSON(line)


def iter_file(path: Path, default_system: str | None = None) -> Iterator[tuple[str, Any]]:
    """The rows of a file by its type (:data:`FILE_TYPES`); what can be checked before reading its
    rows (type, header) is checked here, at once (:class:`SourceError`)."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return iter_parquet(path, default_system=default_system)
    if suffix in (".csv", ".txt", ".tsv"):
        return iter_csv(path, default_system=default_system)
    if suffix in (".jsonl", ".ndjson"):
        return iter_jsonl(path)
    hint = "; a .json file: one party.v1 record per line, named .jsonl" if suffix == ".json" else ""
    raise SourceError(f"{path}: unknown file type '{suffix or '(none)'}'; known: {FILE_TYPES}{hint}")


def parties(rows: Iterator[tuple[str, dict[str, Any]]], default_system: str | None,
            errors: list[RowError]) -> Iterator[Party]:
    for where, row in rows:
        try:
            yield row_to_party(row, default_system)
        except (ValidationError, ValueError) as exc:
            errors.append(RowError(where, _why(exc)))


def _why(exc: ValidationError | ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
    return str(exc)


class _Lite:
    """What the initial load reads of a record besides its raw JSON (a validated Party costs
    several times more to send between processes)."""

    __slots__ = ("deleted", "kind", "name", "source_id", "source_system", "source_updated_at")

    def __init__(self, p: Party) -> None:
        self.source_system, self.source_id, self.kind = p.source_system, p.source_id, p.kind
        self.name, self.deleted, self.source_updated_at = p.name, p.deleted, p.source_updated_at


def _prepare_rows(fn: Any, default_system: str | None, rows: list[tuple[str, Any]]) -> list[tuple[Any, ...]]:
    """Rows → records, all a record's own work done (in a worker process when there is one):
    validate, raw JSON and content hash, standardize (``fn``; None: left to the service).
    Each row gives ``(where, message)`` if it does not validate, else ``(where, envelope id,
    record, raw, content hash, standardized, its JSON)`` — the record as a :class:`_Lite`, or
    the Party itself when it is left to the service to standardize (and to report). A
    :class:`~esbhub.mdm.standardize.StdParty` goes as ``(…, raw JSON text, content hash, None,
    standardized JSON text)``: the texts the store keeps, which the ingesting process needs anyway
    and unpickles several times faster than the dicts and the model (:func:`_ingest_form`)."""
    from esbhub.mdm.service import content_hash, std_json
    from esbhub.mdm.standardize import StdParty

    out: list[tuple[Any, ...]] = []
    for where, row in rows:
        try:
            p = row_to_party(row, default_system)
        except (ValidationError, ValueError) as exc:
            out.append((where, _why(exc)))
            continue
        raw = p.model_dump(mode="json", exclude_none=True)
        h, _canon = content_hash(raw)
        std = stdj = None
        if fn is not None:
            try:
                std = fn(p)
                stdj = std_json(std)
            except Exception:  # noqa: BLE001 - the service standardizes it again and reports it
                std = stdj = None
        if type(std) is StdParty:
            with contextlib.suppress(TypeError):  # as the store's json_dumps; where orjson fails (it falls
                # back on the stdlib), as dicts
                out.append((where, _envelope_id(h), _Lite(p), orjson.dumps(raw).decode(), h, None,
                            orjson.dumps(stdj).decode()))
                continue
        out.append((where, _envelope_id(h), _Lite(p) if std is not None else p, raw, h, std, stdj))
    return out


def _ingest_form(row: tuple[Any, ...]) -> tuple[Any, str, Any]:
    """A prepared row (:func:`_prepare_rows`, not an error) as :meth:`BulkLoad.add
    <esbhub.mdm.bulk.BulkLoad.add>` takes it: ``(record, envelope id, Prepared)``."""
    _where, envelope_id, rec, raw, h, std, stdj = row
    if isinstance(raw, str):  # the texts of a StdParty record
        rawt, stdt = raw, stdj
        raw, stdj = orjson.loads(rawt), orjson.loads(stdt)
        return rec, envelope_id, Prepared(raw=raw, content_hash=h, std=_std_party(dict(stdj)), stdj=stdj,
                                          rawt=rawt, stdt=stdt)
    return rec, envelope_id, Prepared(raw=raw, content_hash=h, std=std, stdj=stdj)


def _taken(pending: collections.deque[tuple[list[Any], Any]], result: Any) -> tuple[list[Any], Any]:
    """The oldest batch in flight and its workers' result."""
    buf, futs = pending.popleft()
    return buf, result(futs)


def _standardize_batch(fn: Any, items: list[tuple[str, bytes]]) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Standardize a batch in a worker process: each record comes as its canonical ``party.v1``
    JSON (cheaper to send than a pickled model) and goes back as (standardized form, its JSON).
    A record that fails is left to the service, which reports it as it would have without the worker."""
    from esbhub.mdm.service import std_json

    out = {}
    for envelope_id, canon in items:
        try:
            std = fn(Party.model_validate_json(canon))
            out[envelope_id] = (std, std_json(std))
        except Exception:  # noqa: BLE001,S112 - the service standardizes it again and raises InvalidMessage
            continue
    return out


def default_workers() -> int:
    """Standardizing processes beside the ingesting one: one per spare CPU, at most 3."""
    return max(0, min(3, (os.cpu_count() or 1) - 1))


def load(svc: Any, rows: Iterator[tuple[str, dict[str, Any]]], *, default_system: str | None = None,
         batch: int = 500, publish: Any = None, workers: int | None = None, bulk: bool | None = None) -> dict[str, Any]:
    """Run rows through the MDM pipeline (see :func:`load_parties`); rows that do not validate are
    reported in ``errors`` and skipped."""
    errors: list[RowError] = []
    out = _run(svc, rows, default_system, batch=batch, publish=publish, workers=workers, errors=errors, bulk=bulk,
               as_rows=True)
    out["errors"] = [e.__dict__ for e in errors]
    return out


class _Item:
    """One record on its way in: the party, its envelope id and what the service would compute
    from it alone (raw JSON and content hash here, the standardized form in a worker)."""

    __slots__ = ("canon", "envelope_id", "party", "prepared")

    def __init__(self, party: Party) -> None:
        from esbhub.mdm.service import Prepared, content_hash

        raw = party.model_dump(mode="json", exclude_none=True)
        h, self.canon = content_hash(raw)
        self.party = party
        self.envelope_id = _envelope_id(h)  # = envelope_id_for(party), without dumping it twice
        self.prepared = Prepared(raw=raw, content_hash=h)


def load_parties(svc: Any, records: Iterable[Party], *, batch: int = 500, publish: Any = None,
                 workers: int | None = None, errors: list[RowError] | None = None,
                 bulk: bool | None = None) -> dict[str, Any]:
    """Run ``party.v1`` records through the MDM pipeline — the bulk initial load.

    Into a store that holds no source record yet (and unless ``bulk`` is False), the whole load
    goes through :class:`esbhub.mdm.bulk.BulkLoad`: one transaction, clustered and survived once
    at the end, ``mode`` "bulk" in the result. Otherwise (``mode`` "batches") it goes in batches of
    ``batch`` records, one :meth:`~esbhub.mdm.service.MdmService.ingest_many` transaction each.

    ``publish(events)`` gets each batch's ``party.golden.*`` events (e.g. ``broker.publish_many``),
    in commit order with every other MDM writer's (a worker beside the load, a steward): each
    batch publishes under the MDM's publication lock (:mod:`esbhub.mdm.publication`), a bulk
    load holds it from before its transaction to its last event.
    Each record's raw JSON and content hash are computed once here (its envelope id is derived
    from the hash, as :func:`envelope_id_for`). With ``workers`` > 0 (default:
    :func:`default_workers`), batch k+1 is standardized in worker processes while batch k is
    matched, clustered and stored here — standardization is a pure function of the record (the
    worker gets the record's canonical JSON, which validates back to the same record), so the
    outcome is the same as without workers.
    """
    return _run(svc, records, None, batch=batch, publish=publish, workers=workers, errors=errors, bulk=bulk,
                as_rows=False)


def _run(svc: Any, source: Iterable[Any], default_system: str | None, *, batch: int, publish: Any,
         workers: int | None, errors: list[RowError] | None, bulk: bool | None, as_rows: bool) -> dict[str, Any]:
    """:func:`load_parties` (``source``: Party records) and :func:`load` (``source``: rows). An
    initial load of rows has the workers validate them too (:func:`_prepare_rows`): the ingesting
    process then only matches, clusters and writes."""
    from esbhub.mdm.bulk import BulkLoad
    from esbhub.mdm.service import MdmService, Prepared

    errors = [] if errors is None else errors
    n = events = 0
    workers = default_workers() if workers is None else workers
    fn = getattr(svc, "standardizer", None)
    pool: Any = None

    def ingest_rows(buf: list[tuple[str, Any]], done: list[tuple[Any, ...]] | None) -> None:
        nonlocal n
        if done is None:  # no worker (yet): the same work here
            done = _prepare_rows(fn, default_system, buf)
        items = []
        for row in done:
            if len(row) == 2:
                errors.append(RowError(row[0], row[1]))
                continue
            items.append(_ingest_form(row))
        n += len(items)
        assert bl is not None
        bl.add(items, lambda p, msg: errors.append(RowError(f"{p.source_system}:{p.source_id}", msg)))

    def ingest(buf: list[Any], stds: Any) -> None:
        nonlocal events
        if rows_mode:
            ingest_rows(buf, stds)
            return
        ahead: dict[str, Prepared] = {}
        for it in buf:
            got = stds.get(it.envelope_id) if stds else None
            ahead[it.envelope_id] = it.prepared if got is None else \
                Prepared(raw=it.prepared.raw, content_hash=it.prepared.content_hash, std=got[0], stdj=got[1])
        if bl is not None:
            bl.add([(it.party, it.envelope_id, ahead[it.envelope_id]) for it in buf],
                   lambda p, msg: errors.append(RowError(f"{p.source_system}:{p.source_id}", msg)))
            return
        items = [(it.party, it.envelope_id, None) for it in buf]
        try:  # published by the service, right after each commit and in commit order
            evs = svc.ingest_many(items, std=ahead, publish=publish)
        except InvalidMessage:  # one bad record must not sink its batch: find it, load the rest
            evs = []
            for item in items:
                try:
                    evs += svc.ingest_many([item], std=ahead, publish=publish)
                except InvalidMessage as exc:
                    errors.append(RowError(f"{item[0].source_system}:{item[0].source_id}", exc.message))
        events += len(evs)

    def standardized(buf: list[_Item]) -> Any:
        nonlocal pool, workers
        if workers <= 0 or fn is None:
            return None
        if pool is None:  # started at the first full batch (a small load never pays for it), warming
            import multiprocessing  # up while that batch is standardized and ingested here
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            return None
        items = buf if rows_mode else [(it.envelope_id, it.canon) for it in buf]
        step = max(1, -(-len(items) // workers))
        task = functools.partial(_prepare_rows, fn, default_system) if rows_mode else \
            functools.partial(_standardize_batch, fn)
        try:
            return [pool.submit(task, items[i : i + step]) for i in range(0, len(items), step)]
        except Exception as exc:  # noqa: BLE001 - a broken pool costs speed, never records: go on without it
            log.warning("mdm_load_standardize_pool_failed", error_type=type(exc).__name__, error=str(exc))
            workers = 0
            return None

    def result(futs: Any) -> Any:
        if futs is None:
            return None
        if rows_mode:
            t = time.perf_counter()
            try:
                return [row for f in futs for row in f.result()]
            except Exception as exc:  # noqa: BLE001 - a broken worker costs speed, never records
                log.warning("mdm_load_prepare_worker_failed", error_type=type(exc).__name__, error=str(exc))
                return None
            finally:
                if bl is not None:  # how long the ingesting process waited for the workers
                    bl.timings["wait"] = bl.timings.get("wait", 0.0) + time.perf_counter() - t
        std: dict[str, tuple[Any, dict[str, Any]]] = {}
        try:
            for f in futs:
                std.update(f.result())
        except Exception as exc:  # noqa: BLE001 - a broken worker costs speed, never records
            log.warning("mdm_load_standardize_worker_failed", error_type=type(exc).__name__, error=str(exc))
            return None
        return std

    # batches being standardized, oldest first: a few in flight, so the workers never wait for this
    # process to take the next one (with one ahead, every batch here that took longer than usual
    # left them idle, and every one that took less left this process waiting)
    pending: collections.deque[tuple[list[Any], Any]] = collections.deque()
    buf: list[Any] = []
    ordered = contextlib.ExitStack()  # a bulk load that publishes: the publication lock to its last event
    with ordered, contextlib.ExitStack() as stack:
        maybe_bulk = bulk is not False and isinstance(svc, MdmService)
        if maybe_bulk and publish is not None:  # taken before the load's writer lock, as every writer does
            ordered.enter_context(svc.publication())
        bl = stack.enter_context(BulkLoad.open(svc)) if maybe_bulk else None
        if bl is None:
            ordered.close()  # batch by batch: each batch's publish is ordered on its own
        rows_mode = as_rows and bl is not None
        if as_rows and not rows_mode:  # batch by batch: rows become records here
            source = parties(iter(source), default_system, errors)
        depth = 1 + 2 * max(workers, 1)
        try:
            for p in source:
                if rows_mode:
                    buf.append(p)
                else:
                    buf.append(_Item(p))
                    n += 1
                if len(buf) >= batch:
                    pending.append((buf, standardized(buf)))
                    buf = []
                    while len(pending) > depth:
                        ingest(*_taken(pending, result))
            if buf:
                pending.append((buf, standardized(buf)))
            while pending:
                ingest(*_taken(pending, result))
            if bl is not None:
                events += bl.finish(pool)  # golden records survived in the standardizing processes
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        stack.close()  # commits the bulk load
        if bl is not None and publish is not None:  # committed: its events go out now, the lock still held
            bl.publish(publish, batch)
    out = {"records": n, "events": events, "errors": [e.__dict__ for e in errors],
           "mode": "bulk" if bl is not None else "batches"}
    if bl is not None:
        out["phases"] = {k: round(v, 1) for k, v in bl.timings.items()}  # seconds
    return out
