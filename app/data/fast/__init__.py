"""The fast path of the scan: CSV, TSV and JSONL read by Arrow a block at a time and profiled column by
column, for the same report the exact, row-by-row path (app/data/delimited.py, jsonl.py) makes.

It is a shortcut, never a second opinion: the moment a file holds anything the exact path would report
(an error, a limit passed), or a case the fast path does not reproduce to the last detail, it gives up
and the exact path reads the file, for its report with lines and columns. Training and previews always
read rows through the exact path (scan.iter_records); tests/test_scan_fast_path.py holds the two to the
same reports. It reads a stored file, or an upload while it arrives (feed.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from app.data.limits import ScanLimits
from app.data.profile import ScanResult

log = logging.getLogger(__name__)


class NotExact(Exception):
    """The fast path cannot promise the exact path's report for this file (something is wrong with it,
    or it holds a case the fast path does not reproduce): the exact path reads it instead."""


def fast_scan(path: Path, fmt: str, limits: ScanLimits) -> ScanResult | None:
    """The report of a well-formed CSV, TSV or JSONL file; None where the exact path must read it."""
    with open(path, "rb", buffering=0) as fh:
        return fast_scan_source(fh, fmt, limits, path.name)


def fast_scan_source(source, fmt: str, limits: ScanLimits, name: str = "upload") -> ScanResult | None:
    """As fast_scan, reading from ``source`` (a blocking ``read(n)``) from its first byte."""
    from app.data.fast.delimited import scan_delimited_fast  # pyarrow: imported when a file is scanned
    from app.data.fast.jsonl import scan_jsonl_fast

    result = ScanResult(format=fmt, limits=limits)
    try:
        if fmt == "jsonl":
            scan_jsonl_fast(source, result)
        elif fmt in ("csv", "tsv"):
            scan_delimited_fast(source, result, "\t" if fmt == "tsv" else ",")
        else:
            return None
    except NotExact as exc:
        log.debug("%s: the exact path reads it (%s)", name, exc)
        return None
    except Exception as exc:  # Arrow refusing the file is the common case; any other is a reason too
        log.debug("%s: the exact path reads it (%s: %s)", name, type(exc).__name__, exc)
        return None
    if result.errors or result.rows == 0:
        return None
    return result


__all__ = ["NotExact", "fast_scan", "fast_scan_source"]
