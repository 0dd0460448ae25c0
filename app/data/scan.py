"""Read an uploaded table once, streaming, and describe it: format, rows, columns, per-column
statistics and every problem found, each with its line (or row) and column.

Nothing here holds the whole file in memory: CSV/TSV/JSONL are read line by line, Parquet by
record batch. The statistics are what jobs are later validated against, so a job can be refused
with a precise message without reading the file again."""

from __future__ import annotations

import codecs
import csv
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("csv", "tsv", "jsonl", "parquet")
MAX_REPORTED = 100  # problems listed per file; the count says how many more there were
MAX_DISTINCT = 1000  # distinct values remembered per column (enough to know a label set)
MAX_NULL_LINES = 20

_INT = re.compile(r"^[+-]?[0-9]+$")
# What a CSV cell may look like to be read as a number: ASCII digits, no "1_000", no "١٢".
_NUMBER_CHARS = re.compile(r"^[0-9+\-.eE]+$")
csv.field_size_limit(64 * 1024 * 1024)


class UnreadableFile(Exception):
    """The file is not one of the supported formats at all."""


@dataclass
class Problem:
    message: str
    line: int | None = None
    column: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "message": self.message}


@dataclass
class ColumnStats:
    non_null: int = 0
    nulls: int = 0
    null_lines: list[int] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)
    kind_lines: dict[str, int] = field(default_factory=dict)  # first line holding each kind of value
    distinct: dict[str, int] | None = field(default_factory=dict)  # None once past MAX_DISTINCT
    all_integer: bool = True
    num_min: float | None = None
    num_max: float | None = None
    num_sum: float = 0.0
    num_sumsq: float = 0.0
    text_chars: int = 0
    text_chars_max: int = 0
    list_len_max: int = 0
    item_kinds: Counter = field(default_factory=Counter)
    item_distinct: dict[str, int] | None = field(default_factory=dict)

    def add(self, value: Any, line: int) -> None:
        if value is None:
            self.nulls += 1
            if len(self.null_lines) < MAX_NULL_LINES:
                self.null_lines.append(line)
            return
        self.non_null += 1
        kind = _kind(value)
        self.kinds[kind] += 1
        self.kind_lines.setdefault(kind, line)
        if kind in ("int", "float"):
            v = float(value)
            self.num_sum += v
            self.num_sumsq += v * v
            self.num_min = v if self.num_min is None else min(self.num_min, v)
            self.num_max = v if self.num_max is None else max(self.num_max, v)
            self.all_integer &= kind == "int" or v.is_integer()
        elif kind == "str":
            self.text_chars += len(value)
            self.text_chars_max = max(self.text_chars_max, len(value))
        elif kind == "list":
            self.list_len_max = max(self.list_len_max, len(value))
            for item in value:
                self.item_kinds[_kind(item)] += 1
                self.item_distinct = _remember(self.item_distinct, item)
        if kind != "list" and kind != "dict":
            self.distinct = _remember(self.distinct, value)

    def as_dict(self) -> dict[str, Any]:
        return {
            "non_null": self.non_null, "nulls": self.nulls, "null_lines": self.null_lines,
            "kinds": dict(self.kinds), "kind_lines": self.kind_lines, "distinct": self.distinct,
            "all_integer": self.all_integer, "min": self.num_min, "max": self.num_max,
            "sum": self.num_sum, "sumsq": self.num_sumsq,
            "text_chars_mean": (self.text_chars / self.kinds["str"]) if self.kinds["str"] else 0,
            "text_chars_max": self.text_chars_max, "list_len_max": self.list_len_max,
            "item_kinds": dict(self.item_kinds), "item_distinct": self.item_distinct,
        }


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list"
    return "dict"


def value_key(value: Any) -> str:
    """How a label value is named everywhere (profiles, label names): text as is, others as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _remember(seen: dict[str, int] | None, value: Any) -> dict[str, int] | None:
    if seen is None or isinstance(value, (list, dict)):
        return seen
    key = value_key(value)
    if key not in seen and len(seen) >= MAX_DISTINCT:
        return None
    seen[key] = seen.get(key, 0) + 1
    return seen


@dataclass
class ScanResult:
    format: str | None
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    stats: dict[str, ColumnStats] = field(default_factory=dict)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    error_count: int = 0

    def error(self, message: str, line: int | None = None, column: str | None = None) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append(Problem(message, line, column))

    def warn(self, message: str, line: int | None = None, column: str | None = None) -> None:
        if len(self.warnings) < MAX_REPORTED:
            self.warnings.append(Problem(message, line, column))

    def add_row(self, record: dict[str, Any], line: int) -> None:
        self.rows += 1
        for name in self.columns:
            self.stats[name].add(record.get(name), line)

    def profile(self) -> dict[str, Any]:
        return {name: s.as_dict() for name, s in self.stats.items()}

    def validation(self) -> dict[str, Any]:
        report: dict[str, Any] = {"errors": [p.as_dict() for p in self.errors],
                                  "warnings": [p.as_dict() for p in self.warnings]}
        if self.error_count > len(self.errors):
            report["errors_not_listed"] = self.error_count - len(self.errors)
        return report


def sniff_format(head: bytes, filename: str = "") -> str:
    """Recognise the format by content; the extension only breaks a tie (a one-column table)."""
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip(codecs.BOM_UTF8).lstrip()
    if text.startswith(b"{"):
        return "jsonl"
    if text.startswith(b"["):
        raise UnreadableFile("The file is a JSON array. Upload JSON Lines instead: one JSON object per line.")
    first_line = text.split(b"\n", 1)[0]
    tabs, commas = first_line.count(b"\t"), first_line.count(b",")
    if tabs and tabs >= commas:
        return "tsv"
    if commas:
        return "csv"
    return "tsv" if filename.lower().endswith(".tsv") else "csv"


def scan_file(path: Path, filename: str = "") -> ScanResult:
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head.removeprefix(codecs.BOM_UTF8).strip():
        result = ScanResult(format=None)
        result.error("The file is empty. Upload a CSV, TSV, JSONL or Parquet file with a header and rows.")
        return result
    try:
        fmt = sniff_format(head, filename)
    except UnreadableFile as exc:
        result = ScanResult(format=None)
        result.error(str(exc), line=1)
        return result
    result = ScanResult(format=fmt)
    for line, record in _records(path, fmt, result):
        result.add_row(record, line)
    if result.rows == 0 and not result.errors:
        result.error("The file has no data rows.")
    return result


def iter_records(path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    """The rows of an already-validated file, typed exactly as the scan saw them (training reads
    through here too, so what was validated is what is trained on). Rows with errors are skipped."""
    for _line, record in iter_numbered_records(path, fmt):
        yield record


def iter_numbered_records(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number, record) pairs, for checks that must name where a row is."""
    return _records(path, fmt, ScanResult(format=fmt))


def _records(path: Path, fmt: str, result: ScanResult) -> Iterator[tuple[int, dict[str, Any]]]:
    if fmt == "parquet":
        return _scan_parquet(path, result)
    if fmt == "jsonl":
        return _scan_jsonl(path, result)
    return _scan_delimited(path, result, "\t" if fmt == "tsv" else ",")


def _decoded_lines(path: Path, result: ScanResult) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                result.error(f"Line {number} is not valid UTF-8 (byte {exc.start + 1}); save the file as UTF-8.",
                             line=number)
                yield number, raw.decode("utf-8", errors="replace")


def _cell(text: str) -> Any:
    """CSV cells are text; numbers are recognised so that labels and targets can be checked."""
    stripped = text.strip()
    if stripped == "":
        return None
    if _INT.match(stripped):
        return int(stripped)
    if not _NUMBER_CHARS.match(stripped):
        return text
    try:
        number = float(stripped)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _scan_delimited(path: Path, result: ScanResult, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # Feed the csv module from our own line iterator so that we know the physical line of every
    # record, quoted multi-line fields included.
    current = {"line": 0}

    def lines() -> Iterator[str]:
        for number, text in _decoded_lines(path, result):
            current["line"] = number
            yield text

    # TSV as most tools write it (GLUE, spreadsheets' "tab-separated") has no quoting: a value may
    # start with a double quote, and must not swallow the lines after it.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(lines(), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        result.error(f"Cannot read the header: {exc}.", line=1)
        return
    header = [h.strip() for h in header]
    _set_columns(result, header, line=1)
    if result.errors:
        return
    while True:
        start = current["line"] + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            result.error(f"Malformed {result.format.upper()} on line {start}: {exc}.", line=start)
            continue
        if not row or (len(row) == 1 and row[0].strip() == "" and len(header) > 1):
            continue  # blank line
        if len(row) != len(header):
            if current["line"] > start and delimiter != "\t" and any("\n" in v for v in row):
                hint = (f"a double quote opened on line {start} is not closed where it should be (it runs to "
                        f"line {current['line']}); close it, or double it (\"\") inside a quoted value.")
            else:
                hint = f"check for an unquoted '{'TAB' if delimiter == chr(9) else delimiter}' in a value."
            result.error(f"Line {start} has {len(row)} fields but the header has {len(header)}; {hint}",
                         line=start)
            continue
        yield start, {h: _cell(v) for h, v in zip(header, row)}


class _NotFinite(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def _scan_jsonl(path: Path, result: ScanResult) -> Iterator[tuple[int, dict[str, Any]]]:
    row_lines: list[int] = []  # the first rows' lines, for a key that only appears later
    for number, text in _decoded_lines(path, result):
        if not text.strip():
            continue
        try:
            # NaN and Infinity are not JSON (and no database's JSON type stores them): refuse them here.
            record = json.loads(text.rstrip("\r\n"), parse_constant=_reject_constant, parse_float=_finite_float)
        except json.JSONDecodeError as exc:
            result.error(f"Invalid JSON on line {number}, column {exc.colno}: {exc.msg}.", line=number)
            continue
        except _NotFinite as exc:
            result.error(f"Line {number} has the number {exc}, which JSON does not allow; use null for a "
                         "missing value.", line=number)
            continue
        if not isinstance(record, dict):
            result.error(f"Line {number} is a JSON {type(record).__name__}, not an object.", line=number)
            continue
        for key in record:
            if key not in result.stats:
                if result.rows:
                    # Earlier rows lacked this key: they count as missing values.
                    result.stats[key] = ColumnStats(nulls=result.rows, null_lines=row_lines[:MAX_NULL_LINES])
                else:
                    result.stats[key] = ColumnStats()
                result.columns.append(key)
        if len(row_lines) < MAX_NULL_LINES:
            row_lines.append(number)
        yield number, record


def _scan_parquet(path: Path, result: ScanResult) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        result.error(f"The Parquet file cannot be read: {exc}.")
        return
    _set_columns(result, list(pf.schema_arrow.names), line=None)
    row_number = 0
    batches = pf.iter_batches(batch_size=2048)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:  # a damaged row group, a type pyarrow cannot convert
            result.error(f"The Parquet file cannot be read after row {row_number}: {exc}.", line=row_number + 1)
            return
        for record in batch.to_pylist():
            row_number += 1
            bad = _parquet_not_finite(record)
            if bad:
                result.error(f"Row {row_number} has the value {record[bad]} in column '{bad}'; use null for a "
                             "missing value.", line=row_number, column=bad)
                continue
            yield row_number, record


def _parquet_not_finite(record: dict[str, Any]) -> str | None:
    # NaN / Infinity would poison the statistics and cannot be stored or returned as JSON.
    for name, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            return name
    return None


def _set_columns(result: ScanResult, header: list[str], line: int | None) -> None:
    seen: set[str] = set()
    for index, name in enumerate(header, start=1):
        if not name:
            result.error(f"Column {index} of the header has no name.", line=line)
        elif name in seen:
            result.error(f"Column name '{name}' appears twice in the header.", line=line, column=name)
        seen.add(name)
    result.columns = header
    result.stats = {h: ColumnStats() for h in header}
