"""CSV and TSV read by Arrow's streaming CSV reader (blocks of BLOCK_BYTES), every cell kept as text
and typed as delimited._cell types it, column by column: a null is a cell that is only whitespace
(Python's), a number is what float() or int() would read after the same strip. Most text cells start
with a byte that no number or blank can start with, so only the others go through the slower kernels.

Arrow and Python's csv module split records alike on well-formed files; wherever they could differ
(an empty line, a line break that is a lone "\\r", a field count that does not match, a record or cell
over the limits, a NUL), the fast path stops and the exact path reads the file."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from app.data.delimited import MAX_NUMBER_CHARS
from app.data.fast import NotExact
from app.data.fast.columns import Block, Folder, LineMap, Piece, float_keys, string_parts
from app.data.fast.raw import RawText, read_up_to
from app.data.profile import ScanResult, set_columns

BLOCK_BYTES = 1 << 20

# What str.strip() strips (str.isspace), as one string: checked against Python by the tests.
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                 "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
# float()'s syntax over delimited._NUMBER_CHARS (digits, signs, ".", "e"): anything else there is text.
_FLOAT = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_INT = r"^[+-]?[0-9]+$"


def _may_start_blank_or_number() -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    for char in PY_WHITESPACE:
        table[char.encode("utf-8")[0]] = True  # a multi-byte space is known by its lead byte
    for char in "0123456789+-.":
        table[ord(char)] = True
    return table


_CANDIDATE_LEAD = _may_start_blank_or_number()


def scan_delimited_fast(source, result: ScanResult, delimiter: str) -> None:
    """Profile a CSV or TSV read from ``source`` (a blocking ``read(n)``: a file, or an upload arriving)."""
    quoted = delimiter != "\t"  # TSV is read without quoting, as the exact path reads it
    head = read_up_to(source, BLOCK_BYTES)
    names = _header_names(head, delimiter, quoted)
    header = [name.strip() for name in names]
    set_columns(result, header, line=1)
    if result.errors:
        raise NotExact("the header has problems")
    raw = RawText(source, head)
    reader = pcsv.open_csv(
        raw, read_options=pcsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=True),
        parse_options=_parse_options(delimiter, quoted),
        convert_options=pcsv.ConvertOptions(column_types={name: pa.string() for name in names}, check_utf8=True,
                                            strings_can_be_null=False, quoted_strings_can_be_null=False))
    if reader.schema.names != names or any(field.type != pa.string() for field in reader.schema):
        raise NotExact("the header is not what its first block showed")
    folder = Folder(result)
    next_line = 2  # the header is one line
    with reader:
        for batch in reader:
            _check_records(batch, result)
            extra = _line_breaks_in_values(batch) if quoted and raw.quote_seen else None
            lines = LineMap(next_line, None if extra is None else extra[0])
            for name, column in zip(header, batch.columns):
                folder.fold(name, type_cells(column), lines)
            result.rows += batch.num_rows
            next_line += batch.num_rows + (0 if extra is None else extra[1])
            if raw.has_nul or raw.lone_cr:
                raise NotExact("a NUL byte, or a carriage return alone")
    if raw.physical_lines() != next_line - 1 or raw.has_nul or raw.lone_cr:
        raise NotExact("Arrow's records do not account for the file's lines")
    folder.finish()


def _parse_options(delimiter: str, quoted: bool) -> pcsv.ParseOptions:
    return pcsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False, double_quote=quoted,
                             escape_char=False, newlines_in_values=quoted, ignore_empty_lines=False)


def _header_names(head: bytes, delimiter: str, quoted: bool) -> list[str]:
    """The header's names as Arrow reads them, from its first line. A header whose quotes run past the
    line (a line break in a name) is left to the exact path, as is one longer than the first block;
    the main reader must then find the same names."""
    end = head.find(b"\n")
    if end < 0 or (quoted and head.count(b'"', 0, end) % 2):
        raise NotExact("a header longer than a block, or with a line break in a name")
    reader = pcsv.open_csv(io.BytesIO(head[:end + 1]), read_options=pcsv.ReadOptions(use_threads=False),
                           parse_options=_parse_options(delimiter, quoted))
    names = reader.schema.names
    reader.close()
    return names


def _check_records(batch: pa.RecordBatch, result: ScanResult) -> None:
    """The exact path's bounds on a record and a cell, and its skipping of empty lines, which Arrow
    reads as a row of empty cells (as it does ",", which is not skipped): either one, not decided here."""
    limits = result.limits
    lengths = [np.diff(string_parts(column)[0]) for column in batch.columns]
    longest = [int(length.max()) if length.size else 0 for length in lengths]
    if max(longest, default=0) > limits.max_cell_bytes:
        raise NotExact("a cell over max_cell_bytes")
    empty = np.zeros(batch.num_rows, dtype=np.int64)
    for length in lengths:
        empty += length == 0
    if (empty == len(lengths)).any():
        raise NotExact("an empty line, or a row of empty cells")
    # A record's bytes: each cell at most doubled by quoting, plus its quotes, delimiters and line break.
    overhead = 3 * len(lengths) + 1
    if sum(2 * n for n in longest) + overhead > limits.max_row_bytes:
        size = np.full(batch.num_rows, overhead, dtype=np.int64)
        for length in lengths:
            size += 2 * length
        if (size > limits.max_row_bytes).any():
            raise NotExact("a record that may be over max_row_bytes")


def _line_breaks_in_values(batch: pa.RecordBatch) -> tuple[np.ndarray, int] | None:
    """(line breaks inside the values of the rows before each row, all of the batch's), or None when
    no value of the batch holds one (then every record is one line)."""
    holding = [column for column in batch.columns if _holds_line_break(column)]
    if not holding:
        return None
    per_row = np.zeros(batch.num_rows, dtype=np.int64)
    for column in holding:
        per_row += pc.count_substring(column, "\n").to_numpy(zero_copy_only=False)
    before = np.concatenate(([0], np.cumsum(per_row)[:-1]))
    return before, int(per_row.sum())


def _holds_line_break(column: pa.Array) -> bool:
    offsets, data = string_parts(column)
    return bool(np.count_nonzero(data[offsets[0]:offsets[-1]] == ord("\n")))


def type_cells(column: pa.Array) -> Block:
    """delimited._cell, for a column of a block: None, int, float or the text itself."""
    rows = len(column)
    offsets, data = string_parts(column)
    lengths = np.diff(offsets)
    lead = data[np.minimum(offsets[:-1], max(len(data) - 1, 0))] if len(data) else np.zeros(rows, np.uint8)
    candidate = (lengths == 0) | _CANDIDATE_LEAD[lead]
    nulls = np.zeros(rows, dtype=bool)
    ints = np.zeros(rows, dtype=bool)
    floats = np.zeros(rows, dtype=bool)
    numbers = np.zeros(rows, dtype=np.float64)
    int_keys = float_key_values = None
    where = np.flatnonzero(candidate)
    if where.size:
        stripped = pc.utf8_trim(column.take(pa.array(where)), PY_WHITESPACE)
        size = pc.binary_length(stripped).to_numpy(zero_copy_only=False)
        nulls[where] = size == 0
        numeric = (size > 0) & (size <= MAX_NUMBER_CHARS) & \
            pc.match_substring_regex(stripped, _FLOAT).to_numpy(zero_copy_only=False)
        if numeric.any():
            texts = stripped.filter(pa.array(numeric))
            values = pc.cast(texts, pa.float64()).to_numpy(zero_copy_only=False)
            is_int = pc.match_substring_regex(texts, _INT).to_numpy(zero_copy_only=False)
            finite = np.isfinite(values)  # an int of up to 300 digits always is
            # int("-0") is 0, and float(0) is 0.0, where float("-0") is -0.0.
            values = np.where(is_int & (values == 0), 0.0, values)
            rows_numeric = where[numeric]
            ints[rows_numeric[is_int]] = True
            floats[rows_numeric[~is_int & finite]] = True
            numbers[rows_numeric] = values
            int_keys = _canonical_ints(texts.filter(pa.array(is_int))) if is_int.any() else None
            float_key_values = values[~is_int & finite]
    text = ~(nulls | ints | floats)
    text_values = column if text.all() else column.filter(pa.array(text))
    pieces = [Piece("str", text, text_values)]
    if ints.any():
        pieces.append(Piece("int", ints, int_keys))
    if floats.any():
        pieces.append(Piece("float", floats, float_keys(float_key_values)))
    return Block(rows=rows, nulls=nulls, pieces=pieces, numbers=numbers,
                 text_chars=_characters(text_values, lengths[text] if data.max(initial=0) < 0x80 else None))


def _characters(texts: pa.Array, ascii_lengths: np.ndarray | None) -> np.ndarray:
    """len() of each text: its bytes, when the block is ASCII (one vectorised max tells)."""
    if ascii_lengths is not None:
        return ascii_lengths
    return pc.utf8_length(texts).to_numpy(zero_copy_only=False)


def _canonical_ints(texts: pa.Array) -> pa.Array:
    """str(int(text)): no "+", no leading zeros, no "-0" (json.dumps of the int, the label key)."""
    texts = pc.replace_substring_regex(texts, r"^\+", "")
    texts = pc.replace_substring_regex(texts, r"^(-?)0+([0-9])", r"\1\2")
    return pc.replace_substring_regex(texts, r"^-0$", "0")
