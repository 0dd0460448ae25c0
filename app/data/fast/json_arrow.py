"""Arrow's JSON reader (pyarrow 26), used within bounds it does not keep itself. Each was found by feeding
it what an upload may hold, and each failure would take the API process down with it:

- a key that changes type between the chunks of one read crashes it: every read is one chunk;
- a line nesting tens of thousands of levels overflows its stack: a line long enough to nest deeper than
  SAFE_DEPTH (longer than SHORT_LINE bytes) is measured first, as the exact path measures it;
- a read builds a slot for every key on every row, present or not: a megabyte of rows each with keys of
  its own would build billions. So the keys are learned from probes of at most PROBE_LINES lines and
  PROBE_BYTES, and the rest is read against them (new keys are an error there: the block is probed in
  turn), never more than SLOT_BUDGET slots a read;
- it has built a list column whose offsets run past its values: every table is validated;
- it reads ISO dates in strings as timestamps: those are read again as text."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.json as pjson

from app.data.fast import NotExact
from app.data.jsonl import nesting_exceeds

SAFE_DEPTH = 512
SHORT_LINE = 1024  # a line this long nests at most this deep: well within Arrow's stack
PROBE_LINES = 256
PROBE_BYTES = 64 * 1024
SLOT_BUDGET = 4_000_000


def check_nesting(block: bytes) -> None:
    """No line of the block nests deeper than SAFE_DEPTH. Only lines longer than SHORT_LINE can, and a
    window of SHORT_LINE bytes without a line break finds each of them (a memrchr per window)."""
    position, size = 0, len(block)
    while position + SHORT_LINE <= size:
        newline = block.rfind(b"\n", position, position + SHORT_LINE)
        if newline >= 0:
            position = newline + 1
            continue
        end = block.find(b"\n", position)
        end = size if end < 0 else end + 1
        line = block[position:end]
        if line.count(b"[") + line.count(b"{") > SAFE_DEPTH and \
                nesting_exceeds(line.decode("utf-8", "replace"), SAFE_DEPTH):
            raise NotExact("a line nesting deeper than Arrow's reader can take")
        position = end


def parse_block(block: bytes, lines: int, known: pa.Schema | None, max_columns: int) -> tuple[pa.Table, bool]:
    """The block's rows as a table; whether it had to be probed (its keys or types were not ``known``)."""
    if known is not None and len(known) and lines * len(known) <= SLOT_BUDGET:
        try:
            return _read(block, known), False
        except pa.ArrowInvalid:
            pass  # a new key, or a type that changed: learn them
    return _probe(block, max_columns), True


def _probe(block: bytes, max_columns: int) -> pa.Table:
    """Read in pieces of PROBE_LINES lines and PROBE_BYTES (a longer line alone), each learning its keys;
    together they may hold no more keys than a file may, nor more slots than a read."""
    ends = _line_ends(block)
    tables, start, line, rows = [], 0, 0, 0
    keys: pa.Schema | None = None
    while start < len(block):
        by_lines = min(line + PROBE_LINES, len(ends)) - 1
        by_bytes = int(np.searchsorted(ends, start + PROBE_BYTES, side="right")) - 1  # the last line within
        last = max(line, min(by_lines, by_bytes))
        end = int(ends[last])
        table = _read(block[start:end], None)
        keys = table.schema if keys is None else pa.unify_schemas([keys, table.schema], promote_options="permissive")
        rows += table.num_rows
        if len(keys) > max_columns or len(keys) * rows > SLOT_BUDGET:
            raise NotExact("more keys than a block may hold")
        tables.append(table)
        start, line = end, last + 1
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def _line_ends(block: bytes) -> np.ndarray:
    """Where each line of the block ends (after its line break)."""
    ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == ord("\n")) + 1
    return ends if block.endswith(b"\n") else np.append(ends, len(block))


def _read(text: bytes, schema: pa.Schema | None) -> pa.Table:
    """One read, one chunk; against ``schema`` (new keys an error), or learning the keys."""
    options = pjson.ParseOptions(newlines_in_values=False, explicit_schema=schema,
                                 unexpected_field_behavior="error" if schema is not None else "infer")
    read = pjson.ReadOptions(block_size=len(text) + 1, use_threads=False)
    table = pjson.read_json(pa.BufferReader(text), read_options=read, parse_options=options)
    _validate(table)
    if schema is None and _has_timestamp(table.schema):
        as_text = pa.schema([field.with_type(_text_for_timestamps(field.type)) for field in table.schema])
        table = pjson.read_json(pa.BufferReader(text), read_options=read, parse_options=pjson.ParseOptions(
            newlines_in_values=False, unexpected_field_behavior="error", explicit_schema=as_text))
        _validate(table)
    return table


def _validate(table: pa.Table) -> None:
    nested = any(pa.types.is_nested(field.type) for field in table.schema)
    try:
        table.validate(full=nested)
    except pa.ArrowInvalid as exc:
        raise NotExact(f"Arrow built an invalid table: {exc}") from None


def _has_timestamp(schema_or_type) -> bool:
    types = [f.type for f in schema_or_type] if isinstance(schema_or_type, pa.Schema) else [schema_or_type]
    for kind in types:
        if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
            return True
        if pa.types.is_struct(kind) and _has_timestamp(pa.schema(list(kind))):
            return True
        if pa.types.is_list(kind) and _has_timestamp(kind.value_type):
            return True
    return False


def _text_for_timestamps(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return pa.string()
    if pa.types.is_struct(kind):
        return pa.struct([f.with_type(_text_for_timestamps(f.type)) for f in kind])
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_text_for_timestamps(kind.value_type)))
    return kind
