"""Read an uploaded table once, streaming, and describe it: format, rows, columns, per-column
statistics and every problem found, each with its line (or row) and column.

Nothing here holds the whole file, nor more than a bounded part of it (ScanLimits): CSV/TSV/JSONL are
read line by line with each line bounded, Parquet by row group and record batch with each row measured
before it becomes Python. The statistics are what jobs are later validated against, so a job can be
refused with a precise message without reading the file again. Training, job checks and estimates read
the rows through iter_records with the same limits, so what was validated is what is trained on."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.data.delimited import scan_delimited
from app.data.jsonl import scan_jsonl
from app.data.limits import ScanLimits
from app.data.profile import ColumnStats, Problem, ScanResult, value_key

FORMATS = ("csv", "tsv", "jsonl", "parquet")

__all__ = ["FORMATS", "ColumnStats", "Problem", "ScanLimits", "ScanResult", "UnreadableFile", "iter_numbered_records",
           "iter_records", "scan_file", "sniff_format", "value_key"]


class UnreadableFile(Exception):
    """The file is not one of the supported formats at all."""


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


def scan_file(path: Path, filename: str = "", limits: ScanLimits | None = None) -> ScanResult:
    limits = limits or ScanLimits()
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head.removeprefix(codecs.BOM_UTF8).strip():
        result = ScanResult(format=None, limits=limits)
        result.error("The file is empty. Upload a CSV, TSV, JSONL or Parquet file with a header and rows.")
        return result
    try:
        fmt = sniff_format(head, filename)
    except UnreadableFile as exc:
        result = ScanResult(format=None, limits=limits)
        result.error(str(exc), line=1)
        return result
    result = ScanResult(format=fmt, limits=limits)
    for line, record in _records(path, fmt, result):
        result.add_row(record, line)
    if result.rows == 0 and not result.errors:
        result.error("The file has no data rows.")
    return result


def iter_records(path: Path, fmt: str, limits: ScanLimits | None = None) -> Iterator[dict[str, Any]]:
    """The rows of an already-validated file, typed exactly as the scan saw them (training reads
    through here too, so what was validated is what is trained on). Rows with errors are skipped."""
    for _line, record in iter_numbered_records(path, fmt, limits):
        yield record


def iter_numbered_records(path: Path, fmt: str, limits: ScanLimits | None = None
                          ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number, record) pairs, for checks that must name where a row is."""
    return _records(path, fmt, ScanResult(format=fmt, limits=limits or ScanLimits()))


def _records(path: Path, fmt: str, result: ScanResult) -> Iterator[tuple[int, dict[str, Any]]]:
    if fmt == "parquet":
        from app.data.parquet import scan_parquet  # pyarrow is imported only when a Parquet file is read

        return scan_parquet(path, result)
    if fmt == "jsonl":
        return scan_jsonl(path, result)
    return scan_delimited(path, result, "\t" if fmt == "tsv" else ",")
