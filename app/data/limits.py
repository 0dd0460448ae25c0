"""How much of an uploaded file the scanner will hold at once. Every size here is one a client controls
(by writing the file), so each is checked before the work it would cause; what is over a limit becomes a
problem in the file's report, naming its line (or row) and column, never an exception.

The scanner stays free of settings: every reader (the scan, training, job checks, estimates) passes
``ScanLimits.from_settings(settings)``; the defaults equal the settings' defaults."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_UPLOAD_BYTES = 512 * 2**20
DECODED_PER_UPLOAD_BYTE = 8


@dataclass(frozen=True)
class ScanLimits:
    # One record (a CSV/TSV record, a JSONL line, a Parquet row) and one value in it (FT_MAX_ROW_BYTES,
    # FT_MAX_CELL_BYTES). A physical line longer than max_row_bytes is skipped without being read whole.
    max_row_bytes: int = 2**20
    max_cell_bytes: int = 512 * 1024
    # Lists and objects inside a record, the record itself counted as level 1 (FT_MAX_NESTING_DEPTH).
    max_nesting_depth: int = 32
    # Each column costs its statistics for the whole scan, and JSONL may add a column on any line.
    max_columns: int = 1000
    # Parquet: what one row group may decode to, estimated from its page headers before it is read
    # (pages, values and dictionaries; Arrow holds a row group's decoded pages while reading it).
    max_row_group_bytes: int = 64 * 2**20
    # Parquet: what the whole file may decode to, as rows that pass the other limits (a 1 KB file of one
    # dictionary value referenced by every row stands for gigabytes of valid rows, all to be scanned and
    # trained on). CSV and JSONL are bounded by the upload limit; Parquet by this multiple of it, room
    # for what compression legitimately saves on text.
    max_decoded_bytes: int = DECODED_PER_UPLOAD_BYTE * DEFAULT_MAX_UPLOAD_BYTES

    @classmethod
    def from_settings(cls, settings) -> "ScanLimits":
        """The limits of a deployment (its FT_MAX_* settings). Every reader of an upload uses the same —
        the scan, job checks, estimates and training — so a file reads later as it was validated."""
        return cls(max_row_bytes=settings.max_row_bytes, max_cell_bytes=settings.max_cell_bytes,
                   max_nesting_depth=settings.max_nesting_depth,
                   max_decoded_bytes=DECODED_PER_UPLOAD_BYTE * settings.max_upload_bytes)
