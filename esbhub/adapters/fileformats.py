"""Records out of files: CSV, fixed-width (column spec in config) and XML, in UTF-8 or
GBK / GB18030 (what Chinese banks and billing systems send).

* Bytes are decoded strictly, line by line: undecodable bytes raise :class:`FileFormatError`
  naming the line (1-based) and the byte offset, so the file goes to ``error/`` with a reason
  a person can act on — it is never skipped or half-read.
* Fixed-width widths count **bytes** by default (a GB18030 Chinese character is 2 or 4 bytes;
  bank file specs count bytes); ``width_unit: chars`` counts characters instead. A column
  boundary that splits a character is an error naming the line and the column.
* Decimal columns come out as strings (``"1234.50"``), never floats: money stays exact.
* XML goes through :func:`parse_xml` — lxml with entities unresolved, no network, no huge
  trees, DTDs refused, size and depth limits — the one hardened parser the SOAP endpoint uses too.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import functools
import io
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, model_validator

from esbhub.errors import InvalidMessage

Encoding = Literal["utf-8", "gbk", "gb18030"]


class FileFormatError(InvalidMessage):
    """A file (or XML document) cannot be read as configured; ``line`` names where (1-based)."""

    def __init__(self, msg: str, *, line: int | None = None, field: str | None = None) -> None:
        super().__init__(msg)
        self.line = line
        self.field = field


# ---------------------------------------------------------------------------------------------
# config


class CsvFormat(BaseModel):
    """Delimited text; the first line names the columns unless ``columns`` is given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["csv"] = Field(description="CSV / delimited text.")
    delimiter: str = Field(default=",", min_length=1, max_length=1, description="Field separator ('|' for many bank files).")
    quotechar: str = Field(default='"', min_length=1, max_length=1, description="Quote character.")
    header: bool = Field(default=True, description="The first (non-skipped) line holds the column names.")
    columns: list[str] | None = Field(default=None, description="Column names (required when header is false).")
    skip_lines: int = Field(default=0, ge=0, le=1000, description="Lines skipped at the top (before the header).")

    @model_validator(mode="after")
    def _names(self) -> CsvFormat:
        if not self.header and not self.columns:
            raise ValueError("csv without a header line needs 'columns'")
        return self


class FixedColumn(BaseModel):
    """One column of a fixed-width record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Field name in the record.")
    start: int = Field(ge=1, description="1-based position of the first byte (or character) of the column.")
    width: int = Field(ge=1, le=100_000, description="Width in bytes (or characters, see width_unit).")
    type: Literal["str", "int", "decimal", "date"] = Field(default="str", description="How the text is converted.")
    decimal: int = Field(
        default=0, ge=0, le=18, description="decimal: implied decimal places when the text has no point ('12345' → '123.45')."
    )
    format: str = Field(default="%Y%m%d", description="date: strptime format of the text; output is ISO 8601.")
    strip: bool = Field(default=True, description="Strip blanks (and full-width blanks) around the text.")


class FixedWidthFormat(BaseModel):
    """Fixed-width records, one per line; columns cut by byte (default) or character position."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["fixed"] = Field(description="Fixed-width text.")
    columns: list[FixedColumn] = Field(min_length=1, description="Column spec: name, start, width, type, decimal.")
    width_unit: Literal["bytes", "chars"] = Field(default="bytes", description="What start/width count.")
    skip_lines: int = Field(default=0, ge=0, le=1000, description="Header lines skipped at the top.")
    skip_trailer_lines: int = Field(default=0, ge=0, le=1000, description="Trailer lines skipped at the end.")
    record_prefix: str | None = Field(
        default=None, description="Only lines starting with this text are records (e.g. '1' for detail lines)."
    )


class XmlFormat(BaseModel):
    """XML: every element matching ``record_path`` is one record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["xml"] = Field(description="XML document.")
    record_path: str = Field(description="ElementPath of the record elements from the root, e.g. './/Customer'.")
    fields: dict[str, str] | None = Field(
        default=None,
        description="Field name → ElementPath (relative to the record; '@attr' for an attribute). "
        "Default: the record's child elements by local name.",
    )
    max_bytes: int = Field(default=50_000_000, ge=1, description="Largest document accepted.")
    max_depth: int = Field(default=64, ge=2, le=1000, description="Deepest element nesting accepted.")


FileFormat = Annotated[CsvFormat | FixedWidthFormat | XmlFormat, Field(discriminator="type")]


# ---------------------------------------------------------------------------------------------
# decoding


def decode_line(raw: bytes, encoding: str, lineno: int) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise FileFormatError(
            f"line {lineno}: bytes not valid {encoding} at byte {exc.start + 1} "
            f"({raw[exc.start:exc.start + 4].hex(' ')})",
            line=lineno,
        ) from None


def _lines(data: bytes) -> list[bytes]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] in (b"", b"\r"):
        lines.pop()
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def decode_text(data: bytes, encoding: str) -> str:
    """The whole file as text; an undecodable byte names its line."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FileFormatError(
            f"line {lineno}: bytes not valid {encoding} at byte {col} ({data[exc.start:exc.start + 4].hex(' ')})",
            line=lineno,
        ) from None


# ---------------------------------------------------------------------------------------------
# conversion

_BLANKS = " \t\u3000"


@functools.lru_cache(maxsize=8192)
def _date(text: str, fmt: str) -> str:
    """ISO date of ``text`` (cached: a bank file repeats a handful of value dates)."""
    return dt.datetime.strptime(text, fmt).date().isoformat()


def _convert(col: FixedColumn, text: str, lineno: int) -> Any:
    if col.strip:
        text = text.strip(_BLANKS)
    if col.type == "str":
        return text
    if text == "":
        return None
    try:
        if col.type == "int":
            return int(text)
        if col.type == "decimal":
            value = decimal.Decimal(text)
            if col.decimal and "." not in text:
                value = value.scaleb(-col.decimal)
            return format(value, "f")
        return _date(text, col.format)
    except (ValueError, decimal.InvalidOperation):
        raise FileFormatError(
            f"line {lineno}: column '{col.name}' (position {col.start}): {text[:40]!r} is not a valid {col.type}",
            line=lineno,
            field=col.name,
        ) from None


def _fixed(data: bytes, fmt: FixedWidthFormat, encoding: str) -> Iterator[tuple[int, dict[str, Any]]]:
    lines = _lines(data)
    end = len(lines) - fmt.skip_trailer_lines
    prefix_b = fmt.record_prefix.encode(encoding) if fmt.record_prefix else None
    cols = [(c, c.start - 1, c.start - 1 + c.width) for c in fmt.columns]
    by_bytes = fmt.width_unit == "bytes"
    for i in range(fmt.skip_lines, end):
        raw = lines[i]
        lineno = i + 1
        if not raw.strip():
            continue
        text = decode_line(raw, encoding, lineno)  # the whole line first: the error names the line
        if prefix_b is not None and not raw.startswith(prefix_b):
            continue
        rec: dict[str, Any] = {}
        if by_bytes:
            for col, a, b in cols:
                try:
                    piece = raw[a:b].decode(encoding)
                except UnicodeDecodeError:
                    raise FileFormatError(
                        f"line {lineno}: column '{col.name}' (bytes {a + 1}-{b}) splits a multi-byte character",
                        line=lineno,
                        field=col.name,
                    ) from None
                rec[col.name] = _convert(col, piece, lineno)
        else:
            for col, a, b in cols:
                rec[col.name] = _convert(col, text[a:b], lineno)
        yield lineno, rec


def _csv(data: bytes, fmt: CsvFormat, encoding: str) -> Iterator[tuple[int, dict[str, Any]]]:
    text = decode_text(data, encoding).lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=fmt.delimiter, quotechar=fmt.quotechar, strict=True)
    names = list(fmt.columns) if fmt.columns else None
    try:
        for row in reader:
            lineno = reader.line_num
            if lineno <= fmt.skip_lines:
                continue
            if names is None:
                names = [h.strip() for h in row]
                continue
            if fmt.header and fmt.columns and lineno == fmt.skip_lines + 1:
                continue  # a header line is present but the configured names win
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(names):
                raise FileFormatError(
                    f"line {lineno}: {len(row)} fields, expected {len(names)} ({', '.join(names)})", line=lineno
                )
            yield lineno, dict(zip(names, row, strict=True))
    except csv.Error as exc:
        raise FileFormatError(f"line {reader.line_num}: {exc}", line=reader.line_num) from None


def parse_xml(data: bytes, *, max_bytes: int = 10_000_000, max_depth: int = 64) -> etree._Element:
    """Parse untrusted XML: no entity expansion, no network, no DTD (refused), bounded size and depth.

    Raises :class:`FileFormatError` (an :class:`InvalidMessage`) naming the line of the problem.
    """
    if len(data) > max_bytes:
        raise FileFormatError(f"XML document of {len(data)} bytes exceeds the limit of {max_bytes}")
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        huge_tree=False,
        load_dtd=False,
        dtd_validation=False,
        remove_comments=True,
        remove_pis=True,
    )
    try:
        root = etree.fromstring(data, parser)  # noqa: S320 - the parser above is hardened
    except etree.XMLSyntaxError as exc:
        line = exc.position[0] if exc.position else None
        raise FileFormatError(f"line {line}: malformed XML: {exc.msg}", line=line) from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise FileFormatError("XML with a DTD (<!DOCTYPE …>) is refused", line=1)
    for el in root.iter():
        depth = 0
        p = el
        while p is not None:
            depth += 1
            if depth > max_depth:
                raise FileFormatError(
                    f"line {el.sourceline}: XML nested deeper than {max_depth} elements", line=el.sourceline
                )
            p = p.getparent()
        if isinstance(el, etree._Entity):
            raise FileFormatError(f"line {el.sourceline}: XML entity references are refused", line=el.sourceline)
    return root


def local_name(tag: Any) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def element_to_value(el: etree._Element) -> Any:
    """Children by local name (repeated names become lists); a leaf is its text."""
    kids = [c for c in el if isinstance(c.tag, str)]
    if not kids:
        return (el.text or "").strip()
    out: dict[str, Any] = {}
    for c in kids:
        k = local_name(c.tag)
        v = element_to_value(c)
        if k in out:
            if not isinstance(out[k], list):
                out[k] = [out[k]]
            out[k].append(v)
        else:
            out[k] = v
    return out


def _xml(data: bytes, fmt: XmlFormat, encoding: str) -> Iterator[tuple[int, dict[str, Any]]]:
    root = parse_xml(data, max_bytes=fmt.max_bytes, max_depth=fmt.max_depth)
    for el in root.iterfind(fmt.record_path):
        if fmt.fields:
            rec: dict[str, Any] = {}
            for name, path in fmt.fields.items():
                if path.startswith("@"):
                    rec[name] = el.get(path[1:])
                else:
                    hit = el.find(path)
                    rec[name] = None if hit is None else element_to_value(hit)
        else:
            v = element_to_value(el)
            rec = v if isinstance(v, dict) else {"value": v}
            rec.update({f"@{k}": v for k, v in el.attrib.items()})
        yield el.sourceline or 0, rec


def parse_records(data: bytes, fmt: CsvFormat | FixedWidthFormat | XmlFormat, encoding: str = "utf-8") -> Iterator[
    tuple[int, dict[str, Any]]
]:
    """(line number, record) pairs of a file. Raises :class:`FileFormatError` naming the line."""
    if isinstance(fmt, FixedWidthFormat):
        return _fixed(data, fmt, encoding)
    if isinstance(fmt, CsvFormat):
        return _csv(data, fmt, encoding)
    return _xml(data, fmt, encoding)


__all__ = [
    "CsvFormat",
    "Encoding",
    "FileFormat",
    "FileFormatError",
    "FixedColumn",
    "FixedWidthFormat",
    "XmlFormat",
    "decode_text",
    "element_to_value",
    "local_name",
    "parse_records",
    "parse_xml",
]
