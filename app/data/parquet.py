"""Parquet rows, read so that no more than a bounded amount is ever decoded or turned into Python.

Parquet is compressed and dictionary-encoded: a 1 KB file can stand for gigabytes of text. So, before
anything is decoded: the footer's size is checked and its parsing bounded, the schema's nesting and
widths, and each row group's decoded size, estimated from its page headers (parquet_pages.py: a
dictionary value counts for every row that references it). While reading, a row group at a time in
small record batches: each row's decoded size is computed with Arrow (parquet_values.py), rows or cells
over the limits are refused by row and column before any of them becomes Python, and the rest is
converted in slices of about a megabyte, within a total for the file (max_decoded_bytes)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.data.parquet_pages import BYTES_PER_VALUE, DamagedPage, TooManyPages, decoded_estimate, read_chunk_pages
from app.data.parquet_values import (UnsupportedType, cell_sizes, check_type, holds_dictionary, nesting_depth,
                                     row_totals, slots_with_invalid_text, slots_with_nul)
from app.data.profile import ScanResult, clip, set_columns

# Rows per record batch: as many as make about BATCH_BYTES decoded, by the row group's estimate. Small
# batches keep Arrow's live memory small, and its allocator's (which keeps freed blocks for reuse).
BATCH_BYTES = 4 << 20
BATCH_ROWS = (64, 4096)
SLICE_BYTES = 1 << 20  # decoded bytes turned into Python at a time
READ_BUFFER_BYTES = 1 << 20  # column chunks are streamed through buffers this size, not read whole
MAX_FOOTER_BYTES = 4 << 20  # parsed metadata takes about 12x its size in memory
MAX_LIST_LENGTH_IN_FOOTER = 100_000  # row groups, columns, key-value pairs
MAX_PAGES = 1_000_000


@dataclass
class _Progress:
    decoded_bytes: int = 0
    pages: int = 0
    stopped: bool = False


def scan_parquet(path: Path, result: ScanResult) -> Iterator[tuple[int, dict[str, Any]]]:
    pf = _open(path, result)
    if pf is None:
        return
    names = pf.schema_arrow.names
    set_columns(result, names, line=None)
    if len(names) > result.limits.max_columns or _schema_problems(pf, result):
        return
    metadata = pf.metadata
    leaves = _leaves(pf)
    progress = _Progress()
    row = 0
    with open(path, "rb") as fh:
        for group in range(metadata.num_row_groups):
            problem, estimate = _check_row_group(fh, metadata, group, leaves, row, result, progress)
            if problem:
                result.error(*problem)
                if progress.stopped:
                    return
                row += metadata.row_group(group).num_rows
                continue
            batches = pf.iter_batches(batch_size=_batch_rows_for(metadata.row_group(group).num_rows, estimate),
                                      row_groups=[group], use_threads=False)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except Exception as exc:  # a damaged page, a value pyarrow cannot convert
                    result.error(f"The Parquet file cannot be read after row {row}: {clip(str(exc), 300)}.",
                                 line=row + 1)
                    return
                yield from _batch_rows(batch, row, result, progress)
                if progress.stopped:
                    return
                row += batch.num_rows


def _open(path: Path, result: ScanResult) -> pq.ParquetFile | None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(size - 8, 0))
        tail = fh.read(8)
    if tail[4:] == b"PARE":
        result.error("The Parquet file is encrypted; upload it unencrypted.")
        return None
    if size < 12 or tail[4:] != b"PAR1":
        result.error("The Parquet file cannot be read: it does not end with PAR1, so it is damaged or cut short.")
        return None
    footer = int.from_bytes(tail[:4], "little")
    if footer > MAX_FOOTER_BYTES:
        result.error(f"The Parquet file's metadata is {footer:,} bytes; at most {MAX_FOOTER_BYTES:,}. Write it "
                     "with fewer row groups (a larger row_group_size) or fewer columns.")
        return None
    try:
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES,
                              thrift_string_size_limit=MAX_FOOTER_BYTES,
                              thrift_container_size_limit=MAX_LIST_LENGTH_IN_FOOTER,
                              schema_depth_limit=4 * result.limits.max_nesting_depth + 4,
                              arrow_extensions_enabled=False)  # extension types are read as their storage
    except Exception as exc:  # pyarrow raises several types for a damaged file
        result.error(f"The Parquet file cannot be read: {clip(str(exc), 300)}.")
        return None


def _schema_problems(pf: pq.ParquetFile, result: ScanResult) -> bool:
    limits = result.limits
    found = False
    if pf.metadata.num_columns > limits.max_columns:
        result.error(f"The Parquet file has {pf.metadata.num_columns:,} leaf columns (inside structs and lists "
                     f"included); at most {limits.max_columns}. Keep only the columns the job needs.")
        return True
    for column in pf.schema_arrow:
        try:
            check_type(column.type, limits.max_cell_bytes)
        except UnsupportedType as exc:
            result.error(f"Column '{column.name}' {exc}", column=column.name)
            found = True
            continue
        depth = 1 + nesting_depth(column.type)  # the row itself is the first level
        if depth > limits.max_nesting_depth:
            result.error(f"Column '{column.name}' nests lists and structs {depth} levels deep (the row counted); "
                         f"at most {limits.max_nesting_depth} (FT_MAX_NESTING_DEPTH). Flatten it.",
                         column=column.name)
            found = True
    return found


@dataclass(frozen=True)
class _Leaf:
    byte_array: bool
    width: int  # fixed-size binary's width, else 0
    as_dictionary: bool  # the file's stored Arrow schema makes Arrow read it as a dictionary


def _leaves(pf: pq.ParquetFile) -> list[_Leaf]:
    dictionary_columns = {f.name for f in pf.schema_arrow if holds_dictionary(f.type)}
    leaves = []
    for j in range(pf.metadata.num_columns):
        column = pf.schema.column(j)
        leaves.append(_Leaf(byte_array=column.physical_type == "BYTE_ARRAY",
                            width=column.length if column.physical_type == "FIXED_LEN_BYTE_ARRAY" else 0,
                            as_dictionary=_top(column.path) in dictionary_columns))
    return leaves


def _batch_rows_for(rows: int, estimate: int) -> int:
    low, high = BATCH_ROWS
    return max(low, min(high, rows * BATCH_BYTES // max(estimate, 1)))


def _check_row_group(fh, metadata, group: int, leaves: list[_Leaf], first_row: int, result: ScanResult,
                     progress: _Progress) -> tuple[tuple | None, int]:
    """(why row `group` cannot be read within max_row_group_bytes, as error arguments, or None; what it
    decodes to). The footer's sizes are checked first (an honest large row group is refused without
    reading a page), then the page headers, which are what Arrow acts on."""
    limit = result.limits.max_row_group_bytes
    info = metadata.row_group(group)
    chunks = [info.column(j) for j in range(info.num_columns)]
    estimates = [c.total_uncompressed_size + c.num_values * (BYTES_PER_VALUE + leaf.width)
                 for c, leaf in zip(chunks, leaves)]
    if sum(estimates) <= limit:
        estimates = []
        for chunk, leaf in zip(chunks, leaves):
            if chunk.num_values == 0:  # Arrow reads no page of a chunk that claims no values
                estimates.append(0)
                continue
            start = chunk.data_page_offset
            if chunk.has_dictionary_page and chunk.dictionary_page_offset and chunk.dictionary_page_offset < start:
                start = chunk.dictionary_page_offset
            try:
                pages = read_chunk_pages(fh, start, chunk.total_compressed_size, MAX_PAGES - progress.pages)
                progress.pages += pages.pages
                estimates.append(decoded_estimate(fh, pages, codec=chunk.compression, byte_array=leaf.byte_array,
                                                  value_width=leaf.width, as_dictionary=leaf.as_dictionary,
                                                  budget=limit))
            except (DamagedPage, OSError) as exc:
                progress.stopped = isinstance(exc, TooManyPages)
                return (f"Row group {group + 1}, column '{chunk.path_in_schema}' cannot be read: {exc}.",
                        first_row + 1, _top(chunk.path_in_schema)), 0
        if sum(estimates) <= limit:
            return None, sum(estimates)
    biggest = max(range(len(chunks)), key=lambda j: estimates[j])
    column = chunks[biggest].path_in_schema
    rows = info.num_rows
    smaller = _round_down(max(1, rows * limit // (2 * sum(estimates))))
    fix = (f"Write the file with smaller row groups, e.g. pyarrow.parquet.write_table(table, path, "
           f"row_group_size={smaller:,})." if rows > 1 else "It holds a single row: shorten its values.")
    return (f"Row group {group + 1} (rows {first_row + 1:,} to {first_row + rows:,}) would decode to about "
            f"{sum(estimates):,} bytes; at most {limit:,} per row group. Its largest column is '{column}' (about "
            f"{estimates[biggest]:,} bytes: a value repeated by a dictionary or an encoding counts for every row "
            f"it is in). {fix}", first_row + 1, _top(column)), 0


def _top(path: str) -> str:
    return path.split(".", 1)[0]


def _round_down(count: int) -> int:
    magnitude = 10 ** (len(str(count)) - 1)
    return max(1, count // magnitude * magnitude)


def _batch_rows(batch: pa.RecordBatch, first_row: int, result: ScanResult,
                progress: _Progress) -> Iterator[tuple[int, dict[str, Any]]]:
    """The batch's rows as Python records, in slices of a bounded decoded size; rows with a problem are
    reported instead (found by Arrow, before any row becomes Python)."""
    limits = result.limits
    sizes_by_column = [cell_sizes(column) for column in batch.columns]
    row_sizes = row_totals(sizes_by_column, batch.num_rows)
    problems = _row_problems(batch, first_row, limits, sizes_by_column, row_sizes)
    sizes = row_sizes.to_pylist()
    start = 0
    while start < batch.num_rows:
        if start in problems:
            message, column = problems[start]
            result.error(message, line=first_row + start + 1, column=column)
            start += 1
            continue
        remaining = limits.max_decoded_bytes - progress.decoded_bytes
        if sizes[start] > remaining:
            row = first_row + start + 1
            result.error(f"The Parquet file decodes to more than {limits.max_decoded_bytes:,} bytes by row {row:,}: "
                         "its compression or dictionaries expand it beyond what an upload may hold. Upload fewer "
                         "rows.", line=row)
            progress.stopped = True
            return
        end, slice_bytes, budget = start, 0, min(SLICE_BYTES, remaining)
        while end < batch.num_rows and end not in problems and (end == start or slice_bytes + sizes[end] <= budget):
            slice_bytes += sizes[end]
            end += 1
        progress.decoded_bytes += slice_bytes
        for offset, record in enumerate(batch.slice(start, end - start).to_pylist()):
            row = first_row + start + offset + 1
            bad = _not_finite(record)
            if bad:
                result.error(f"Row {row} has the value {record[bad]} in column '{bad}'; use null for a "
                             "missing value.", line=row, column=bad)
                continue
            yield row, record
        start = end


def _row_problems(batch: pa.RecordBatch, first_row: int, limits, sizes_by_column: list[pa.Array],
                  row_sizes: pa.Array) -> dict[int, tuple[str, str]]:
    """Row index → (message, column) of the first problem of each bad row: a value or a row over its
    limit, text that is not UTF-8, a NUL character."""
    names = batch.schema.names
    problems: dict[int, tuple[str, str]] = {}
    for name, sizes in zip(names, sizes_by_column):
        for i, size in _over(sizes, limits.max_cell_bytes):
            problems.setdefault(i, (f"Row {first_row + i + 1}, column '{name}': the value is {size:,} bytes when "
                                    f"decoded; at most {limits.max_cell_bytes:,} (FT_MAX_CELL_BYTES). Shorten it.",
                                    name))
    for i, size in _over(row_sizes, limits.max_row_bytes):
        largest = names[max(range(len(names)), key=lambda j: sizes_by_column[j][i].as_py())]
        problems.setdefault(i, (f"Row {first_row + i + 1} is {size:,} bytes when decoded; at most "
                                f"{limits.max_row_bytes:,} (FT_MAX_ROW_BYTES). Its largest value is in column "
                                f"'{largest}'; shorten it.", largest))
    for name, column in zip(names, batch.columns):
        for i in slots_with_invalid_text(column):
            problems.setdefault(i, (f"Row {first_row + i + 1}, column '{name}': a text is not valid UTF-8; write "
                                    "the file with UTF-8 text.", name))
        for i in slots_with_nul(column):
            problems.setdefault(i, (f"Row {first_row + i + 1}, column '{name}': a text holds a NUL character "
                                    "(\\x00); remove it.", name))
    return problems


def _over(values: pa.Array, limit: int) -> list[tuple[int, int]]:
    """(index, value) of the values above `limit`: found by Arrow, so only the few offenders are Python."""
    indices = pc.indices_nonzero(pc.greater(values, limit))
    return list(zip(indices.to_pylist(), pc.take(values, indices).to_pylist()))


def _not_finite(record: dict[str, Any]) -> str | None:
    # NaN / Infinity would poison the statistics and cannot be stored or returned as JSON.
    for name, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            return name
    return None
