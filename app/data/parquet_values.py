"""Per-row facts about Arrow arrays computed without turning values into Python or expanding them:
each row's decoded size, and how many of its texts hold a NUL character. Dictionary values are
measured once and their measures taken by index, lists are summed through their offsets, structs
field by field; the recursion follows the type, whose depth the scanner has already bounded."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pt


class UnsupportedType(Exception):
    pass


def _is_text_or_binary(t: pa.DataType) -> bool:
    return pt.is_string(t) or pt.is_large_string(t) or pt.is_binary(t) or pt.is_large_binary(t)


def _is_list_like(t: pa.DataType) -> bool:
    return pt.is_list(t) or pt.is_large_list(t) or pt.is_map(t) or pt.is_fixed_size_list(t) \
        or pt.is_list_view(t) or pt.is_large_list_view(t)


def _children(t: pa.DataType) -> list[pa.DataType]:
    if pt.is_struct(t):
        return [t.field(i).type for i in range(t.num_fields)]
    if pt.is_map(t):
        return [t.key_type, t.item_type]
    if _is_list_like(t):
        return [t.value_type]
    if pt.is_dictionary(t):
        return [t.value_type]
    return []


def check_type(t: pa.DataType, max_cell_bytes: int) -> None:
    """Raise UnsupportedType, with a sentence for the user, for a type the scanner cannot measure."""
    if pt.is_fixed_size_binary(t) and t.byte_width > max_cell_bytes:
        raise UnsupportedType(f"holds values of {t.byte_width:,} bytes each; at most {max_cell_bytes:,} "
                              "(FT_MAX_CELL_BYTES).")
    if not (pt.is_struct(t) or _is_list_like(t) or pt.is_dictionary(t) or _is_text_or_binary(t)
            or pt.is_null(t) or _fixed_width(t) is not None):
        raise UnsupportedType(f"has the type {t}, which cannot be read; use text, numbers, booleans, dates, "
                              "lists or structs.")
    for child in _children(t):
        check_type(child, max_cell_bytes)


def holds_dictionary(t: pa.DataType) -> bool:
    return pt.is_dictionary(t) or any(holds_dictionary(child) for child in _children(t))


def nesting_depth(t: pa.DataType) -> int:
    """Lists, maps and structs inside one another (a dictionary is a value, not a level)."""
    below = max((nesting_depth(child) for child in _children(t)), default=0)
    return below if pt.is_dictionary(t) else below + (1 if _children(t) else 0)


def _fixed_width(t: pa.DataType) -> int | None:
    try:
        return max(t.bit_width // 8, 1)
    except ValueError:  # not a fixed-width type
        return None


def _constant(value: int, length: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.int64()), length)


def _int64(arr: pa.Array) -> pa.Array:
    return arr.cast(pa.int64())


def cell_sizes(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One int64 per slot of `arr`, no nulls: the bytes it decodes to. Text counts its UTF-8 length plus
    one, a fixed-width value its width (at least 1), a list, struct or null one more than what it holds:
    a list of a million nulls is a megabyte, not nothing (its Python list would be eight)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pt.is_dictionary(t):
        return pc.fill_null(pc.take(cell_sizes(arr.dictionary), arr.indices), 1)
    if _is_text_or_binary(t):
        return pc.fill_null(pc.add(_int64(pc.binary_length(arr)), 1), 1)
    if pt.is_struct(t):
        total = _constant(1, len(arr))
        for field in arr.flatten():
            total = pc.add(total, cell_sizes(field))
        return total
    if _is_list_like(t):
        return _list_sizes(arr)
    return _constant(_fixed_width(t) or 1, len(arr))


def _list_sizes(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pt.is_fixed_size_list(t):
        size = t.list_size
        values = arr.values.slice(arr.offset * size, len(arr) * size)
        starts = pa.array(range(0, len(arr) * size, size), pa.int64())
        ends = pc.add(starts, size)
    elif _is_view(t):
        values, starts = arr.values, _int64(arr.offsets)
        ends = pc.add(starts, _int64(arr.sizes))
    else:
        values, starts, ends = arr.values, _int64(arr.offsets[:-1]), _int64(arr.offsets[1:])
    counts = pc.subtract(ends, starts)
    item_type = values.type
    # Summed without an array per item where the items allow it: a row of millions of items is the
    # case to bound, and it must not cost a copy per item to measure.
    if _is_text_or_binary(item_type):
        text_offsets = _int64(_text_offsets(values))
        text_bytes = pc.subtract(pc.take(text_offsets, ends), pc.take(text_offsets, starts))
        totals = pc.add(pc.add(text_bytes, counts), 1)
    elif not _children(item_type) and not _is_text_or_binary(item_type):
        totals = pc.add(pc.multiply(counts, _fixed_width(item_type) or 1), 1)
    else:
        per_item = cell_sizes(values)
        running = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(per_item)])
        del per_item
        totals = pc.add(pc.subtract(pc.take(running, ends), pc.take(running, starts)), 1)
    # A null list counts as a null value, whatever its offsets say.
    return pc.if_else(pc.is_valid(arr), totals, 1)


def _text_offsets(values: pa.Array) -> pa.Array:
    """The offsets of a string or binary array, as an array (pyarrow exposes them only as a buffer)."""
    offset_type = pa.int64() if pt.is_large_string(values.type) or pt.is_large_binary(values.type) else pa.int32()
    return pa.Array.from_buffers(offset_type, len(values) + 1, [None, values.buffers()[1]], offset=values.offset)


def _is_view(t: pa.DataType) -> bool:
    return pt.is_list_view(t) or pt.is_large_list_view(t)


def slots_with_nul(arr: pa.Array | pa.ChunkedArray) -> list[int]:
    """The slots of `arr` holding a text with a NUL character at any depth (binary data may hold NUL
    bytes). Texts are searched by Arrow; only when one matches are items mapped back to their slots."""
    return _slots_with_bad_text(arr, _texts_with_nul)


def slots_with_invalid_text(arr: pa.Array | pa.ChunkedArray) -> list[int]:
    """The slots of `arr` holding a text that is not UTF-8 (Parquet does not check; Python would fail
    to convert it)."""
    return _slots_with_bad_text(arr, _texts_not_utf8)


def _texts_with_nul(texts: pa.Array) -> list[int]:
    return pc.indices_nonzero(pc.fill_null(pc.match_substring(texts, "\x00"), False)).to_pylist()


def _texts_not_utf8(texts: pa.Array) -> list[int]:
    try:
        texts.validate(full=True)
        return []
    except pa.ArrowInvalid:  # rare: only then is each text looked at
        raw = texts.view(pa.large_binary() if pt.is_large_string(texts.type) else pa.binary())
        return [i for i, value in enumerate(raw.to_pylist()) if value is not None and not _is_utf8(value)]


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _slots_with_bad_text(arr: pa.Array | pa.ChunkedArray, bad_texts: Callable[[pa.Array], list[int]]) -> list[int]:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pt.is_string(t) or pt.is_large_string(t):
        return bad_texts(arr)
    if pt.is_dictionary(t):
        bad = _slots_with_bad_text(arr.dictionary, bad_texts)
        if not bad:
            return []
        return pc.indices_nonzero(pc.fill_null(pc.is_in(arr.indices, pa.array(bad, arr.indices.type)),
                                               False)).to_pylist()
    if pt.is_struct(t):
        return sorted({i for field in arr.flatten() for i in _slots_with_bad_text(field, bad_texts)})
    if _is_list_like(t):
        if pt.is_fixed_size_list(t):
            items = arr.values.slice(arr.offset * t.list_size, len(arr) * t.list_size)
            return sorted({i // t.list_size for i in _slots_with_bad_text(items, bad_texts)})
        if _is_view(t):
            arr = arr.cast(pa.large_list(t.value_type))
        elif pt.is_map(t):  # a map is a list of key-value structs, but Arrow's list kernels refuse it
            arr = pa.ListArray.from_arrays(arr.offsets, arr.values)
        items = arr.flatten()  # the items of these slots only, in order
        bad = _slots_with_bad_text(items, bad_texts)
        if not bad:
            return []
        parents = pc.list_parent_indices(arr)
        return sorted(set(pc.take(parents, pa.array(bad, pa.int64())).to_pylist()))
    return []


def row_totals(columns: list[pa.Array], rows: int) -> pa.Array:
    total = _constant(0, rows)
    for column in columns:
        total = pc.add(total, column)
    return total
