"""JSON values as Arrow read them, typed as json.loads would have typed them: the kinds, label keys and
numbers of one top-level key's values in a block (ColumnStats.add's view of them), and the checks on
what Arrow accepts that the exact path refuses (NaN, Infinity, integers of more than 300 digits).

Arrow reads 1 and 1.0 alike as a float when a key holds both; json.loads makes an int of the first.
Where it matters (a whole number among floats) the line is read to tell (``Literals``)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from app.data.fast import NotExact
from app.data.fast.columns import Block, Piece, float_keys
from app.data.profile import MAX_DISTINCT

# A float of at least 301 digits is an integer the exact path refuses (MAX_NUMBER_CHARS).
_HUGE = 1e300


def type_values(array: pa.Array, literals: "Literals | None" = None) -> Block:
    """The kinds, keys and numbers of one column's values (a top-level key of each row); ``literals``
    tells how whole numbers Arrow read as floats were written (1 or 1.0)."""
    rows = len(array)
    nulls = array.is_null().to_numpy(zero_copy_only=False) if array.null_count else np.zeros(rows, dtype=bool)
    present = ~nulls
    block = Block(rows=rows, nulls=nulls)
    kind = array.type
    if pa.types.is_null(kind):
        return block
    if pa.types.is_list(kind):
        block.pieces.append(Piece("list", present))
        block.list_lengths = pc.list_value_length(array).drop_null().to_numpy(zero_copy_only=False)
        items = pc.list_flatten(array)
        block.items = _type_items(items)
        _check_nested(items)
        return block
    if pa.types.is_struct(kind):
        block.pieces.append(Piece("dict", present))
        _check_nested(array)
        return block
    _type_scalars(block, array, present, literals)
    return block


def _type_items(items: pa.Array) -> Block:
    """List items: a null item is an item (kind "dict", key "null", as ColumnStats.add takes None)."""
    rows = len(items)
    nulls = items.is_null().to_numpy(zero_copy_only=False) if items.null_count else np.zeros(rows, dtype=bool)
    block = Block(rows=rows, nulls=np.zeros(rows, dtype=bool))
    if nulls.any():
        block.pieces.append(Piece("dict", nulls, pa.array(["null"] * int(nulls.sum()), pa.string())))
    kind = items.type
    if pa.types.is_null(kind):
        return block
    if pa.types.is_list(kind):
        block.pieces.append(Piece("list", ~nulls))
    elif pa.types.is_struct(kind):
        block.pieces.append(Piece("dict", ~nulls))
    else:
        _type_scalars(block, items, ~nulls)
    return block


def _type_scalars(block: Block, array: pa.Array, present: np.ndarray, literals: "Literals | None" = None) -> None:
    kind = array.type
    values = array.drop_null() if array.null_count else array
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        block.pieces.append(Piece("str", present, values))
        block.text_chars = pc.utf8_length(values).to_numpy(zero_copy_only=False)
    elif pa.types.is_boolean(kind):
        block.pieces.append(Piece("bool", present, pc.if_else(values, "true", "false")))
    elif pa.types.is_int64(kind):
        block.pieces.append(Piece("int", present, pc.cast(values, pa.string())))
        block.numbers = _spread(present, pc.cast(values, pa.float64(), safe=False).to_numpy(zero_copy_only=False))
    elif pa.types.is_float64(kind):
        numbers = values.to_numpy(zero_copy_only=False)
        if not np.isfinite(numbers).all():
            raise NotExact("NaN or Infinity, which the exact path refuses")
        whole = numbers == np.floor(numbers)
        written_int = np.zeros(len(numbers), dtype=bool)
        if whole.any():
            if literals is None:
                raise NotExact("a whole number read as a float inside a list: written 1 or 1.0?")
            rows = np.flatnonzero(present)
            written_int[whole] = literals.written_as_int(rows[whole])
        if written_int.any():
            ints = numbers[written_int]
            if np.abs(ints).max() >= 2.0 ** 53:
                raise NotExact("an integer too large for a float to name exactly")
            numbers = np.where(written_int & (numbers == 0), 0.0, numbers)  # float(int("-0")) is 0.0
            int_rows, float_rows = present.copy(), present.copy()
            int_rows[present] = written_int
            float_rows[present] = ~written_int
            block.pieces.append(Piece("int", int_rows, pa.array([str(int(v)) for v in ints], pa.string())
                                      if len(ints) <= 4 * MAX_DISTINCT else _int_keys(ints)))
            block.pieces.append(Piece("float", float_rows, float_keys(numbers[~written_int])))
        else:
            block.pieces.append(Piece("float", present, float_keys(numbers)))
        block.numbers = _spread(present, numbers)
    else:
        raise NotExact(f"a value of Arrow type {kind}")


def _int_keys(values: np.ndarray) -> pa.Array:
    """str(int(v)) of whole floats below 2**53, in Arrow (exact there, as int64)."""
    return pc.cast(pa.array(values.astype(np.int64)), pa.string())


class BlockText:
    """A block's bytes and lines, to look at what Arrow's values were written as."""

    def __init__(self, block: bytes, content_lines: np.ndarray | None):
        self.block, self.content_lines = block, content_lines
        self._lines: pa.Array | None = None

    def lines_of(self, rows: np.ndarray) -> pa.Array:
        """The text of the lines holding these rows (of the block), without their line breaks."""
        if self._lines is None:
            data = np.frombuffer(self.block, dtype=np.uint8)
            breaks = np.flatnonzero(data == ord("\n"))
            starts = np.concatenate(([0], breaks + 1))
            ends = np.append(breaks, len(data))
            if starts[-1] == len(data):
                starts, ends = starts[:-1], ends[:-1]
            # Each line's value runs to its end; the line break between two lines is left out by
            # taking [start, end) for each line through take() on an array of pairs.
            offsets = np.empty(2 * len(starts), dtype=np.int32)
            offsets[0::2], offsets[1::2] = starts, ends
            both = pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets.tobytes()),
                                               pa.py_buffer(self.block))
            self._lines = both.take(pa.array(np.arange(0, len(offsets) - 1, 2)))
        index = rows if self.content_lines is None else self.content_lines[rows]
        return self._lines.take(pa.array(index))


class Literals:
    """How one top-level key's values were written, on the rows of a chunk of the block."""

    def __init__(self, text: BlockText, name: str, offset: int):
        self.text, self.name, self.offset = text, name, offset

    def written_as_int(self, rows: np.ndarray) -> np.ndarray:
        """For rows whose value is a whole number: written without "." or exponent (an int to
        json.loads). Read off the line when the key appears on it once, as written (no \\u escape on
        the line to disguise it); otherwise the line is parsed by json.loads, which decides."""
        lines = self.text.lines_of(rows + self.offset)
        key = '"' + _re2_escape(self.name) + r'"\s*:'
        # A name JSON could write with a short escape ("\/") is never read off the line.
        plain = not any(c in self.name for c in '"\\/') and all(ord(c) >= 0x20 for c in self.name)
        once = np.zeros(len(lines), dtype=bool)
        if plain:
            once = (pc.count_substring_regex(lines, key).to_numpy(zero_copy_only=False) == 1) & \
                ~pc.match_substring(lines, "\\u").to_numpy(zero_copy_only=False)
        as_int = np.array(pc.match_substring_regex(lines, key + r"\s*-?[0-9]+\s*[,}]").to_numpy(zero_copy_only=False))
        for index in np.flatnonzero(~once):
            value = json.loads(lines[int(index)].as_py())[self.name]
            as_int[index] = isinstance(value, int) and not isinstance(value, bool)
        return as_int


def _re2_escape(text: str) -> str:
    return "".join("\\" + c if c in _RE2_SPECIAL else c for c in text)


_RE2_SPECIAL = set("\\.^$|?*+()[]{}")


def _spread(present: np.ndarray, values: np.ndarray) -> np.ndarray:
    numbers = np.zeros(len(present), dtype=np.float64)
    numbers[present] = values
    return numbers


def _check_nested(array: pa.Array) -> None:
    """Inside lists and objects only what the exact path refuses matters: NaN, Infinity and integers
    of more than 300 digits (read by Arrow as floats of at least 1e300)."""
    kind = array.type
    if pa.types.is_floating(kind):
        numbers = array.drop_null().to_numpy(zero_copy_only=False)
        if numbers.size and (not np.isfinite(numbers).all() or np.abs(numbers).max() >= _HUGE):
            raise NotExact("NaN, Infinity or a huge number inside a value")
    elif pa.types.is_struct(kind):
        for index in range(kind.num_fields):
            _check_nested(array.field(index))
    elif pa.types.is_list(kind):
        _check_nested(pc.list_flatten(array))
    elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_int64(kind)
              or pa.types.is_boolean(kind) or pa.types.is_null(kind)):
        raise NotExact(f"a value of Arrow type {kind}")
