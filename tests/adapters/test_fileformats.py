"""Record parsing of bank / billing files: CSV, fixed-width by byte position, hardened XML."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from esbhub.adapters.fileformats import FileFormat, FileFormatError, parse_records, parse_xml
from esbhub.errors import InvalidMessage

FMT = TypeAdapter(FileFormat)

BANK = FMT.validate_python(
    {
        "type": "fixed",
        "skip_lines": 1,
        "skip_trailer_lines": 1,
        "columns": [
            {"name": "account", "start": 1, "width": 6},
            {"name": "name", "start": 7, "width": 12},
            {"name": "amount", "start": 19, "width": 10, "type": "decimal", "decimal": 2},
            {"name": "date", "start": 29, "width": 8, "type": "date"},
        ],
    }
)


def bank_line(account: str, name: str, cents: int, date: str, enc: str = "gb18030") -> bytes:
    raw_name = name.encode(enc)
    return account.encode() + raw_name + b" " * (12 - len(raw_name)) + f"{cents:010d}".encode() + date.encode()


def test_fixed_width_gb18030_columns_count_bytes_and_decimals_stay_exact():
    data = b"HDR\r\n" + bank_line("000001", "中国移动", 1234550, "20260131") + b"\r\n" + b"TRL 1\r\n"
    rows = list(parse_records(data, BANK, "gb18030"))
    assert rows == [(2, {"account": "000001", "name": "中国移动", "amount": "12345.50", "date": "2026-01-31"})]


def test_undecodable_byte_names_the_line_and_position():
    good = bank_line("000001", "联通", 1, "20260101")
    bad = b"000002\xff\xfe" + b" " * 10 + b"0000000001" + b"20260101"
    data = b"HDR\n" + good + b"\n" + good + b"\n" + bad + b"\nTRL\n"
    with pytest.raises(FileFormatError) as ei:
        list(parse_records(data, BANK, "gb18030"))
    assert ei.value.line == 4 and "line 4" in str(ei.value) and "gb18030" in str(ei.value)
    assert isinstance(ei.value, InvalidMessage)


def test_column_boundary_splitting_a_chinese_character_is_reported():
    fmt = FMT.validate_python({"type": "fixed", "columns": [{"name": "a", "start": 1, "width": 3}]})
    with pytest.raises(FileFormatError, match="line 1: column 'a'.*splits"):
        list(parse_records("中国".encode("gbk"), fmt, "gbk"))


def test_bad_number_in_fixed_width_names_line_and_column():
    data = b"HDR\n" + b"000001" + b" " * 12 + b"00000X0001" + b"20260101" + b"\nTRL\n"
    with pytest.raises(FileFormatError, match="line 2: column 'amount'"):
        list(parse_records(data, BANK, "gb18030"))


def test_csv_with_header_gbk_and_a_short_row():
    fmt = FMT.validate_python({"type": "csv", "delimiter": "|"})
    data = "id|名称\n1|上海分公司\n2|北京\n".encode("gbk")
    assert [r for _, r in parse_records(data, fmt, "gbk")] == [{"id": "1", "名称": "上海分公司"}, {"id": "2", "名称": "北京"}]
    with pytest.raises(FileFormatError, match="line 3: 1 fields, expected 2"):
        list(parse_records(b"id|n\n1|a\n3\n", fmt, "utf-8"))


def test_xml_records_by_path_with_fields_and_attributes():
    fmt = FMT.validate_python(
        {"type": "xml", "record_path": ".//Customer", "fields": {"id": "@id", "name": "Name", "city": "Addr/City"}}
    )
    data = b"<Batch><Customer id='7'><Name>A</Name><Addr><City>Xi'an</City></Addr></Customer><Customer id='8'/></Batch>"
    assert [r for _, r in parse_records(data, fmt)] == [
        {"id": "7", "name": "A", "city": "Xi'an"},
        {"id": "8", "name": None, "city": None},
    ]


@pytest.mark.parametrize(
    "doc, why",
    [
        (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x "boom">]><r>&x;</r>', "DTD"),
        (b'<!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd"><r/>', "DTD"),
        (b"<r>" + b"<a>" * 80 + b"</a>" * 80 + b"</r>", "deeper"),
        (b"<r><a></r>", "malformed"),
    ],
)
def test_hardened_xml_refuses_dtds_entities_deep_nesting_and_garbage(doc, why):
    with pytest.raises(FileFormatError, match=why):
        parse_xml(doc)


def test_xml_size_limit():
    with pytest.raises(FileFormatError, match="exceeds"):
        parse_xml(b"<r>" + b"x" * 100 + b"</r>", max_bytes=50)
