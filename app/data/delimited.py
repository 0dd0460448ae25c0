"""CSV and TSV records, typed cell by cell, each bounded: a record (quoted line breaks included) by
max_row_bytes, a cell by max_cell_bytes, and no text may hold a NUL character."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.data.lines import bounded_lines
from app.data.profile import ScanResult, set_columns

_INT = re.compile(r"^[+-]?[0-9]+$")
# What a CSV cell may look like to be read as a number: ASCII digits, no "1_000", no "١٢".
_NUMBER_CHARS = re.compile(r"^[0-9+\-.eE]+$")
# Past this many characters a "number" is an identifier: as a float it would overflow the statistics
# (and Python refuses to convert integers of more than 4300 digits).
MAX_NUMBER_CHARS = 300
# Only a backstop: a record is bounded by max_row_bytes before the csv module sees it whole (see
# _Record), and cells by max_cell_bytes after, with their line and column. The csv module's limit is
# process-wide, so it cannot carry a per-scan limit safely.
csv.field_size_limit(64 * 1024 * 1024)


class _RecordTooLong(Exception):
    """Raised from the line iterator, so that the csv module never holds more of a record than the limit."""


class _Record:
    """Where the record being read began, how far it runs and how big it is so far."""

    def __init__(self) -> None:
        self.start = 0
        self.last = 0
        self.size = 0
        self.has_nul = False
        self.header_read = False

    def begin(self) -> None:
        self.start, self.size, self.has_nul = 0, 0, False


def scan_delimited(path: Path, result: ScanResult, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    record = _Record()
    # TSV as most tools write it (GLUE, spreadsheets' "tab-separated") has no quoting: a value may
    # start with a double quote, and must not swallow the lines after it.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(_record_lines(path, result, record), delimiter=delimiter, quoting=quoting)
    header = _header(reader, result, record)
    if header is None:
        return
    while True:
        record.begin()
        try:
            row = next(reader)
        except StopIteration:
            break
        except _RecordTooLong:
            _report_too_long(result, record)
            return  # the rest of the file cannot be trusted to start where we would resume
        except csv.Error as exc:
            result.error(f"Malformed {result.format.upper()} on line {record.start}: {exc}.", line=record.start)
            continue
        if not row or (len(row) == 1 and row[0].strip() == "" and len(header) > 1):
            continue  # blank line
        if len(row) != len(header):
            _report_field_count(result, record, delimiter, len(row), len(header), row)
            continue
        if _bad_cell(result, record, header, row):
            continue
        yield record.start, {h: _cell(v) for h, v in zip(header, row)}


def _record_lines(path: Path, result: ScanResult, record: _Record) -> Iterator[str]:
    """The lines the csv module reads, from our own reader: so we know the physical line of every record
    (quoted multi-line fields included) and can stop a record that grows past the limit line by line."""
    for line in bounded_lines(path, result):
        if line.text is None:
            # Already reported. Inside a quoted value the record is too long as well; as the header it
            # leaves nothing to read the rest by; otherwise the next line starts a new record.
            if record.size or not record.header_read:
                raise _RecordTooLong()
            continue
        if not record.size:
            record.start = line.number
        record.last = line.number
        record.size += line.size
        if record.size > result.limits.max_row_bytes:
            raise _RecordTooLong()
        record.has_nul = record.has_nul or "\x00" in line.text
        yield line.text


def _header(reader, result: ScanResult, record: _Record) -> list[str] | None:
    """The header's column names, set on ``result``; None when there are no rows to read after it."""
    try:
        header = next(reader)
    except StopIteration:
        return None
    except _RecordTooLong:
        if record.size:
            _report_too_long(result, record)
        return None
    except csv.Error as exc:
        result.error(f"Cannot read the header: {exc}.", line=1)
        return None
    record.header_read = True
    header = [h.strip() for h in header]
    set_columns(result, header, line=record.start or 1)
    return None if result.errors else header


def _report_field_count(result: ScanResult, record: _Record, delimiter: str, fields: int, columns: int,
                        row: list[str]) -> None:
    start = record.start
    if record.last > start and delimiter != "\t" and any("\n" in v for v in row):
        hint = (f"a double quote opened on line {start} is not closed where it should be (it runs to "
                f"line {record.last}); close it, or double it (\"\") inside a quoted value.")
    else:
        hint = f"check for an unquoted '{'TAB' if delimiter == chr(9) else delimiter}' in a value."
    result.error(f"Line {start} has {fields} fields but the header has {columns}; {hint}", line=start)


def _bad_cell(result: ScanResult, record: _Record, header: list[str], row: list[str]) -> bool:
    """Report the first cell of the record that is too big or holds a NUL; both are rare, so the
    cells are only looked at when the record as a whole could hold one."""
    limit = result.limits.max_cell_bytes
    if record.size <= limit and not record.has_nul:
        return False
    for name, value in zip(header, row):
        if "\x00" in value:
            result.error(f"Line {record.start}, column '{name}': the value holds a NUL character (\\x00); "
                         "remove it.", line=record.start, column=name)
            return True
        if len(value) * 4 > limit and len(value.encode("utf-8", "surrogatepass")) > limit:
            result.error(f"Line {record.start}, column '{name}': the value is "
                         f"{len(value.encode('utf-8', 'surrogatepass')):,} bytes; at most {limit:,} "
                         "(FT_MAX_CELL_BYTES). Shorten it.", line=record.start, column=name)
            return True
    return False


def _report_too_long(result: ScanResult, record: _Record) -> None:
    limit = result.limits.max_row_bytes
    result.error(f"The record that begins on line {record.start} runs to line {record.last} and is longer than "
                 f"{limit:,} bytes (FT_MAX_ROW_BYTES). Most likely a double quote opened on line {record.start} "
                 "is not closed: close it, or double it (\"\") inside a quoted value. The rest of the file was "
                 "not read.", line=record.start)


def _cell(text: str) -> Any:
    """CSV cells are text; numbers are recognised so that labels and targets can be checked."""
    stripped = text.strip()
    if stripped == "":
        return None
    if len(stripped) > MAX_NUMBER_CHARS:
        return text
    if _INT.match(stripped):
        return int(stripped)
    if not _NUMBER_CHARS.match(stripped):
        return text
    try:
        number = float(stripped)
    except ValueError:
        return text
    return number if math.isfinite(number) else text

