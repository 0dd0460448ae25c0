"""JSON Lines read in blocks of whole lines (BLOCK_BYTES), each parsed by Arrow's JSON reader, and typed
column by column as json.loads would have typed the values.

Arrow reads JSON a little more loosely than the exact path (NaN and Infinity, two objects on one line,
a 20-digit integer as a float, "1" and "1.0" both as 1.0, no UTF-8 check, ISO dates as timestamps).
Each is either undone (dates are read again as text) or caught, and then the exact path reads the file:
so are every problem the exact path reports, and every line over the limits."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from app.data.fast import NotExact
from app.data.fast.columns import Block, Folder, LineMap
from app.data.fast.json_arrow import check_nesting, parse_block
from app.data.fast.json_values import BlockText, Literals, type_values
from app.data.fast.raw import read_up_to
from app.data.profile import MAX_NULL_LINES, ScanResult, name_problem

BLOCK_BYTES = 1 << 20
PARSERS = 2
_OPEN_BRACE = ord("{")
_BLANK_BYTES = np.zeros(256, dtype=bool)
_BLANK_BYTES[[ord(" "), ord("\t"), ord("\r"), ord("\n")]] = True


def scan_jsonl_fast(source, result: ScanResult) -> None:
    """Profile JSON Lines read from ``source`` (a blocking ``read(n)``: a file, or an upload arriving)."""
    limits = result.limits
    folder = Folder(result)
    row_lines: list[int] = []
    first_line = 1
    known: pa.Schema | None = None  # the keys and types seen so far: later blocks are read against them
    # Blocks are checked and parsed on PARSERS threads (Arrow and numpy let go of the GIL), a bounded
    # few ahead, and folded in order on this one.
    with ThreadPoolExecutor(max_workers=PARSERS, thread_name_prefix="jsonl-scan") as pool:
        pending: deque = deque()
        blocks = _blocks(source, min(limits.max_row_bytes, limits.max_cell_bytes))
        for block in blocks:
            pending.append(pool.submit(_read_block, block, known, limits.max_columns))
            if len(pending) > PARSERS:
                first_line, known = _fold_block(result, folder, row_lines, first_line, known,
                                                *pending.popleft().result())
        while pending:
            first_line, known = _fold_block(result, folder, row_lines, first_line, known, *pending.popleft().result())
    if result.rows == 0:
        raise NotExact("no rows")
    folder.finish()


def _read_block(block: bytes, known: pa.Schema | None, max_columns: int
                ) -> tuple[bytes, np.ndarray | None, int, pa.Table]:
    content, line_count = _content_lines(block)
    check_nesting(block)
    table, _ = parse_block(block, line_count, known, max_columns)
    if table.num_rows != (line_count if content is None else len(content)):
        raise NotExact("a line holds more than one JSON value, or none")
    return block, content, line_count, table


def _fold_block(result: ScanResult, folder: Folder, row_lines: list[int], first_line: int, known: pa.Schema | None,
                block: bytes, content: np.ndarray | None, line_count: int, table: pa.Table
                ) -> tuple[int, pa.Schema]:
    """Adds a parsed block to the report; returns the line after it and the keys known now."""
    lines = LineMap(first_line) if content is None else _Listed(content + first_line)
    _add_new_columns(result, table.schema, row_lines)
    if len(row_lines) < MAX_NULL_LINES:
        row_lines.extend(lines(np.arange(min(table.num_rows, MAX_NULL_LINES - len(row_lines)))))
    rows = table.num_rows
    text = BlockText(block, content)
    for name in result.columns:
        if name in table.schema.names:
            offset = 0
            for chunk in table.column(name).chunks:
                folder.fold(name, type_values(chunk, Literals(text, name, offset)), _Shifted(lines, offset))
                offset += len(chunk)
        else:
            folder.fold(name, Block(rows=rows, nulls=np.ones(rows, dtype=bool)), lines)
    result.rows += rows
    try:
        known = table.schema if known is None else pa.unify_schemas([known, table.schema], promote_options="permissive")
    except pa.ArrowInvalid:
        raise NotExact("a key whose values change kind between blocks") from None
    return first_line + line_count, known


class _Listed:
    """The lines of a block's rows when some of its lines are blank."""

    def __init__(self, lines: np.ndarray):
        self.lines = lines

    def __call__(self, rows: np.ndarray) -> list[int]:
        return [int(n) for n in self.lines[rows]]


class _Shifted:
    def __init__(self, lines, offset: int):
        self.lines, self.offset = lines, offset

    def __call__(self, rows: np.ndarray) -> list[int]:
        return self.lines(np.asarray(rows) + self.offset)


def _blocks(source, max_line: int) -> Iterator[bytes]:
    """Whole lines, about BLOCK_BYTES at a time; no line longer than max_line (its line break included)."""
    rest = b""
    first = True
    while True:
        chunk = read_up_to(source, BLOCK_BYTES)
        if first and chunk.startswith(b"\xef\xbb\xbf"):
            chunk = chunk[3:]  # the exact reader drops the BOM of line 1
        first = False
        if not chunk:
            if rest:
                _check_line_lengths(rest, max_line)
                yield rest
            return
        block = rest + chunk
        cut = block.rfind(b"\n") + 1
        if len(block) - cut > max_line:
            raise NotExact("a line longer than the limits")
        block, rest = block[:cut], block[cut:]
        if block:
            _check_line_lengths(block, max_line)
            yield block


def _check_line_lengths(block: bytes, max_line: int) -> None:
    """No max_line bytes without a line break: a few memrchr calls per block, not one per line."""
    position, size = 0, len(block)
    while position + max_line <= size:
        newline = block.rfind(b"\n", position, position + max_line)
        if newline < 0:
            raise NotExact("a line longer than the limits")
        position = newline + 1


def _content_lines(block: bytes) -> tuple[np.ndarray | None, int]:
    """The lines of the block that hold something (their index; None: all of them) and how many it has,
    after the checks on its bytes that Arrow does not make. Each check is a memchr or one vectorised
    pass over the block, so the common file pays little for them."""
    if b"\x00" in block or (b"\\" in block and b"\\u0000" in block):
        raise NotExact("a NUL character")
    if b"\r" in block and block.count(b"\r") != block.count(b"\r\n"):
        raise NotExact("a carriage return alone")
    data = np.frombuffer(block, dtype=np.uint8)
    if data.max(initial=0) >= 0x80 and not _valid_utf8(block):
        raise NotExact("not UTF-8")
    breaks = data == ord("\n")
    line_count = int(np.count_nonzero(breaks)) + (0 if block.endswith(b"\n") else 1)
    opening = int(data[0] == _OPEN_BRACE) + int(np.count_nonzero(breaks[:-1] & (data[1:] == _OPEN_BRACE)))
    if opening == line_count:
        return None, line_count
    # Some line does not start with "{": blank (skipped by both readers) or indented.
    ends = np.flatnonzero(breaks)
    starts = np.concatenate(([0], ends + 1))[:line_count]
    ends = np.append(ends, len(data))[:line_count]
    filled = np.concatenate(([0], np.cumsum(~_BLANK_BYTES[data])))
    holds = filled[ends] - filled[starts] > 0
    return np.flatnonzero(holds), line_count


def _valid_utf8(block: bytes) -> bool:
    text = pa.Array.from_buffers(pa.string(), 1, [None, pa.array([0, len(block)], pa.int32()).buffers()[1],
                                                  pa.py_buffer(block)])
    try:
        text.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _add_new_columns(result: ScanResult, schema: pa.Schema, row_lines: list[int]) -> None:
    """Keys seen for the first time, in order: the rows of earlier blocks lacked them (missing values,
    as the exact path counts them; Arrow gives the block's earlier rows a null). Arrow names the keys in
    order of first appearance, as the records would. Also: no key nests deeper than the limit."""
    limits = result.limits
    for field in schema:
        if _depth(field.type) + 1 > limits.max_nesting_depth:
            raise NotExact("nesting that may be over the limit")
        if field.name in result.stats:
            continue
        if name_problem(field.name, limits, len(result.columns) + 1):
            raise NotExact("a key the exact path refuses")
        result.stats[field.name] = result.new_stats(nulls=result.rows, null_lines=row_lines[:MAX_NULL_LINES])
        result.columns.append(field.name)


def _depth(kind: pa.DataType) -> int:
    """Levels of lists and objects a value of this type holds (the deepest any row can)."""
    if pa.types.is_struct(kind):
        return 1 + max((_depth(f.type) for f in kind), default=0)
    if pa.types.is_list(kind):
        return 1 + _depth(kind.value_type)
    return 0
