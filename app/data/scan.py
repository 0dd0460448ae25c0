"""Read an uploaded table once, streaming, and describe it: format, rows, columns, per-column
statistics and every problem found, each with its line (or row) and column.

Nothing here holds the whole file, nor more than a bounded part of it (ScanLimits): CSV/TSV/JSONL are
read by Arrow in blocks of a few megabytes (app/data/fast) or, when the file has problems to report,
line by line with each line bounded, Parquet by row group and record batch with each row measured
before it becomes Python. The statistics are what jobs are later validated against, so a job can be
refused with a precise message without reading the file again. Training, job checks and estimates read
the rows through iter_records with the same limits, so what was validated is what is trained on."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.data.delimited import scan_delimited
from app.data.fast import fast_scan, fast_scan_source
from app.data.fast.raw import read_up_to
from app.data.jsonl import scan_jsonl
from app.data.limits import ScanLimits
from app.data.profile import ColumnStats, Problem, ScanResult, value_key

FORMATS = ("csv", "tsv", "jsonl", "parquet")
_HEAD_BYTES = 4096  # what the format is recognised by

__all__ = ["FORMATS", "ColumnStats", "Problem", "ScanLimits", "ScanResult", "UnreadableFile", "iter_numbered_records",
           "iter_records", "scan_arriving", "scan_file", "sniff_format", "value_key"]


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


def scan_file(path: Path, filename: str = "", limits: ScanLimits | None = None, exact: bool = False) -> ScanResult:
    """The file's report. CSV, TSV and JSONL go through the fast path first (app/data/fast), which hands
    over to the exact path for any file it cannot report exactly; ``exact`` skips it."""
    limits = limits or ScanLimits()
    with open(path, "rb") as fh:
        head = fh.read(_HEAD_BYTES)
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
    if not exact and fmt != "parquet":
        fast = fast_scan(path, fmt, limits)
        if fast is not None:
            return fast
    result = ScanResult(format=fmt, limits=limits)
    for line, record in _records(path, fmt, result):
        result.add_row(record, line)
    if result.rows == 0 and not result.errors:
        result.error("The file has no data rows.")
    return result


def scan_arriving(source, filename: str = "", limits: ScanLimits | None = None) -> ScanResult | None:
    """The report of an upload read as it arrives from ``source`` (a blocking ``read(n)``, fast/feed.py),
    by the fast path; None when the file, once stored, must go through ``scan_file`` (empty, Parquet, not
    recognised, or anything the fast path hands over)."""
    head = read_up_to(source, _HEAD_BYTES)
    if not head.removeprefix(codecs.BOM_UTF8).strip():
        return None
    try:
        fmt = sniff_format(head, filename)
    except UnreadableFile:
        return None
    if fmt == "parquet":
        return None
    return fast_scan_source(_Replay(head, source), fmt, limits or ScanLimits(), filename or "upload")


class _Replay:
    """A source read again from its first byte, the first ``head`` bytes being already read."""

    def __init__(self, head: bytes, source):
        self._head, self._source = head, source

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if 0 <= size < len(self._head):
                part, self._head = self._head[:size], self._head[size:]
                return part
            part, self._head = self._head, b""
            return part
        return self._source.read(size)


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
