"""The physical lines of a text upload, each read with a bound: a line longer than max_row_bytes is
reported and skipped in chunks, so a 500 MB line never sits in memory."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.data.profile import ScanResult

_SKIP_CHUNK = 1 << 20


@dataclass
class Line:
    number: int
    text: str | None  # None: too long, already reported, not read
    size: int  # bytes, line ending included


def bounded_lines(path: Path, result: ScanResult) -> Iterator[Line]:
    limit = result.limits.max_row_bytes
    with open(path, "rb") as fh:
        number = 0
        while True:
            # Two more bytes than the limit: room for the "\r\n" that is not part of the line.
            raw = fh.readline(limit + 2)
            if not raw:
                return
            number += 1
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if len(raw.rstrip(b"\r\n")) > limit:
                size = len(raw) + (0 if raw.endswith(b"\n") else _skip_rest_of_line(fh))
                result.error(f"Line {number} is longer than {limit:,} bytes (FT_MAX_ROW_BYTES): it is {size:,} "
                             "bytes. Shorten its values or split the row; if it should be many lines, check that "
                             "its line breaks are \\n or \\r\\n.", line=number)
                yield Line(number, None, size)
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                result.error(f"Line {number} is not valid UTF-8 (byte {exc.start + 1}); save the file as UTF-8.",
                             line=number)
                text = raw.decode("utf-8", errors="replace")
            yield Line(number, text, len(raw))


def _skip_rest_of_line(fh) -> int:
    skipped = 0
    while True:
        chunk = fh.readline(_SKIP_CHUNK)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped
