"""Column statistics folded a block of rows at a time from Arrow arrays, to exactly what ColumnStats.add
(profile.py) would have made of the same values one by one: the same counts, the same first lines, the
same label sets in the same order, the same sums to the last bit (added in row order, as Python does).

A reader types each column of a block into a ``Block``: which rows are missing, which hold each kind of
value, their label keys (profile.value_key) in row order, their numbers, text lengths and list items.
``Folder`` adds blocks to a ScanResult. What it cannot reproduce exactly raises NotExact."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from app.data.fast import NotExact
from app.data.profile import (
    _ENTRY_OVERHEAD,
    LABEL_MEMORY_BUDGET,
    MAX_DISTINCT,
    MAX_LABEL_CHARS,
    MAX_NULL_LINES,
    ColumnStats,
    ScanResult,
)

# A piece's keys when its block holds more distinct values than a label set may: the column is no
# label candidate, whatever the values are.
TOO_MANY = object()


@dataclass
class Piece:
    kind: str  # profile._kind of the values
    mask: np.ndarray  # which rows of the block hold this kind
    keys: object = None  # pa.Array of their value_key, in row order; None: not remembered; or TOO_MANY


@dataclass
class Block:
    """One column's values in one block of rows (or a column's list items, then ``nulls`` is all False:
    a null item is an item, of kind "dict" — as profile._kind names None — with the key "null")."""

    rows: int
    nulls: np.ndarray
    pieces: list[Piece] = field(default_factory=list)
    numbers: np.ndarray | None = None  # float(value) for the int and float rows, row-aligned
    text_chars: np.ndarray | None = None  # characters of each str row, in row order
    list_lengths: np.ndarray | None = None  # of each list row, in row order
    items: Block | None = None  # the list rows' items, flattened in order


class LineMap:
    """The line of a block's rows: ``first`` plus the row's index, plus the lines taken by line breaks
    inside the values of the rows before it (``extra``: cumulative, per row), if any."""

    def __init__(self, first: int, extra: np.ndarray | None = None):
        self.first, self.extra = first, extra

    def __call__(self, rows: np.ndarray) -> list[int]:
        lines = rows + self.first if self.extra is None else rows + self.extra[rows] + self.first
        return [int(n) for n in lines]


def keys_in_row_order(rows: int, pieces: list[Piece]) -> pa.Array | None:
    """The keys of the pieces that have them, interleaved as their rows are (TOO_MANY wins)."""
    keyed = [p for p in pieces if p.keys is not None and p.mask.any()]
    if any(p.keys is TOO_MANY for p in keyed):
        return TOO_MANY
    if not keyed:
        return None
    if len(keyed) == 1:
        return keyed[0].keys
    merged = pa.nulls(rows, pa.string())
    taken = np.zeros(rows, dtype=bool)
    for piece in keyed:
        merged = pc.replace_with_mask(merged, pa.array(piece.mask), piece.keys)
        taken |= piece.mask
    return merged.filter(pa.array(taken))


class Folder:
    """Adds typed blocks to a ScanResult's statistics."""

    def __init__(self, result: ScanResult):
        self.result = result
        # The most label memory each remembered set held (while it lived): if all of them together
        # stay within the shared budget, the budget never refused a value, in any order of rows.
        self.label_peaks: dict[tuple[str, str], int] = {}

    def fold(self, name: str, block: Block, lines: LineMap) -> None:
        stats = self.result.stats[name]
        null_rows = np.flatnonzero(block.nulls)
        if null_rows.size:
            stats.nulls += int(null_rows.size)
            room = MAX_NULL_LINES - len(stats.null_lines)
            if room > 0:
                stats.null_lines.extend(lines(null_rows[:room]))
        stats.non_null += block.rows - int(null_rows.size)
        for first, kind, count in _kinds_by_first_row(block.pieces):
            stats.kinds[kind] += count
            if kind not in stats.kind_lines:
                stats.kind_lines[kind] = lines(np.array([first]))[0]
        self._numbers(stats, block)
        if block.text_chars is not None and block.text_chars.size:
            stats.text_chars += int(block.text_chars.sum())
            stats.text_chars_max = max(stats.text_chars_max, int(block.text_chars.max()))
        stats.distinct = self._remember(name, "distinct", stats.distinct, keys_in_row_order(block.rows, block.pieces))
        if block.list_lengths is not None and block.list_lengths.size:
            stats.list_len_max = max(stats.list_len_max, int(block.list_lengths.max()))
        if block.items is not None and block.items.rows:
            for _first, kind, count in _kinds_by_first_row(block.items.pieces):
                stats.item_kinds[kind] += count
            stats.item_distinct = self._remember(name, "item_distinct", stats.item_distinct,
                                                 keys_in_row_order(block.items.rows, block.items.pieces))

    @staticmethod
    def _numbers(stats: ColumnStats, block: Block) -> None:
        numeric = np.zeros(block.rows, dtype=bool)
        floats = np.zeros(block.rows, dtype=bool)
        for piece in block.pieces:
            if piece.kind in ("int", "float"):
                numeric |= piece.mask
            if piece.kind == "float":
                floats |= piece.mask
        if not numeric.any():
            return
        values = block.numbers[numeric]
        with np.errstate(over="ignore"):  # as in Python, a square past float's range is inf
            squares = values * values
        # Sequential sums (cumsum adds left to right, as `+=` row by row does; np.sum pairs values up).
        stats.num_sum = float(np.cumsum(np.concatenate(([stats.num_sum], values)))[-1])
        stats.num_sumsq = float(np.cumsum(np.concatenate(([stats.num_sumsq], squares)))[-1])
        # The first of equal values, as min()/max() keep (0.0 and -0.0 are equal, and print differently).
        low, high = float(values[int(np.argmin(values))]), float(values[int(np.argmax(values))])
        stats.num_min = low if stats.num_min is None else min(stats.num_min, low)
        stats.num_max = high if stats.num_max is None else max(stats.num_max, high)
        if floats.any():
            whole = block.numbers[floats]
            stats.all_integer &= bool(np.all(whole == np.floor(whole)))

    def _remember(self, name: str, which: str, seen: dict[str, int] | None, keys) -> dict[str, int] | None:
        """ColumnStats._remember for a block's keys in row order: counts added in order of first
        appearance; the set is dropped at the first key that is too long or one too many."""
        if seen is None or keys is None:
            return seen
        held = self.label_peaks.get((name, which), 0)
        if keys is TOO_MANY:
            self.label_peaks[(name, which)] = max(held, MAX_DISTINCT * (MAX_LABEL_CHARS + _ENTRY_OVERHEAD))
            return None
        if not len(keys):
            return seen
        counted = pc.value_counts(keys)  # in order of first appearance
        # At most MAX_DISTINCT of them are already known, so the set is decided within one more.
        values = counted.field("values")[: MAX_DISTINCT + 1].to_pylist()
        counts = counted.field("counts")[: MAX_DISTINCT + 1].to_pylist()
        cost = sum(len(key) + _ENTRY_OVERHEAD for key in seen)
        for key, count in zip(values, counts):
            if key in seen:
                seen[key] += count
            elif len(key) > MAX_LABEL_CHARS or len(seen) >= MAX_DISTINCT:
                self.label_peaks[(name, which)] = max(held, cost)
                return None
            else:
                seen[key] = count
                cost += len(key) + _ENTRY_OVERHEAD
        self.label_peaks[(name, which)] = max(held, cost)
        return seen

    def finish(self) -> None:
        if sum(self.label_peaks.values()) > LABEL_MEMORY_BUDGET:
            raise NotExact("the label sets together may have met the shared budget: the order of rows decides")
        alive = [(name, which) for name, which in self.label_peaks
                 if getattr(self.result.stats[name], which) is not None]
        self.result.label_budget.left = LABEL_MEMORY_BUDGET - sum(
            sum(len(key) + _ENTRY_OVERHEAD for key in getattr(self.result.stats[name], which)) for name, which in alive)


def _kinds_by_first_row(pieces: list[Piece]) -> list[tuple[int, str, int]]:
    """(first row, kind, count) of the kinds present, in order of their first row (Counter order)."""
    found: dict[str, tuple[int, int]] = {}
    for piece in pieces:
        count = int(np.count_nonzero(piece.mask))
        if not count:
            continue
        first = int(np.argmax(piece.mask))
        if piece.kind in found:
            earlier, total = found[piece.kind]
            found[piece.kind] = (min(earlier, first), total + count)
        else:
            found[piece.kind] = (first, count)
    return sorted((first, kind, count) for kind, (first, count) in found.items())


def float_keys(values: np.ndarray) -> object:
    """value_key of each float (its repr, as json.dumps writes it), or TOO_MANY: computed in Python for
    the distinct values only, and only while they could still be a label set."""
    encoded = pc.dictionary_encode(pa.array(values, pa.float64()))
    uniques = encoded.dictionary
    if len(uniques) > MAX_DISTINCT:
        return TOO_MANY
    names = pa.array([repr(v) for v in uniques.to_pylist()], pa.string())
    return names.take(encoded.indices)


def string_parts(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data) of a string array as numpy views, without copying."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
    data_buffer = array.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    return offsets, data
