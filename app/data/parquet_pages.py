"""What a Parquet column chunk will decode to, read from its page headers before Arrow decodes anything.

The footer's sizes are written by whoever wrote the file and Arrow does not check them against the
pages: a footer may claim 1 KB for a column chunk whose one page declares 300 MB, and Arrow allocates
and fills what the page header says. So the headers themselves are read (Thrift compact protocol, the
few fields needed; everything else skipped by length, never read). A page costs its declared size plus
a bound per value; a dictionary-encoded text value costs the longest value of the chunk's dictionary,
since Arrow copies the value into every row that references it (a one-value dictionary referenced by
every row is the classic Parquet bomb)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow as pa

# Per value decoded, whatever the encoding: offsets or indices (8), definition and repetition levels
# (2 + 2), and room for validity and list offsets. Fixed-size binary adds its width.
BYTES_PER_VALUE = 16
# Arrow reading text as dictionary (a column written from a dictionary array) keeps every distinct value
# of the chunk seen so far, and copies of it: about four times the plain-encoded bytes, as measured.
DICTIONARY_BUILD_FACTOR = 5
_PLAIN_DICTIONARY, _RLE_DICTIONARY, _DELTA_BYTE_ARRAY = 2, 8, 7
_DICTIONARY_PAGE = 2
_READ_AHEAD = 256
_MAX_HEADER_BYTES_READ = 64 * 1024  # page headers are a few dozen bytes; skipped statistics do not count
_MAX_LIST_ITEMS = 10_000
_MAX_DICTIONARY_ENTRIES_PARSED = 2_000_000
_CODECS = {"SNAPPY": "snappy", "GZIP": "gzip", "ZSTD": "zstd", "BROTLI": "brotli", "LZ4_RAW": "lz4_raw"}


class DamagedPage(Exception):
    pass


class TooManyPages(DamagedPage):
    pass


@dataclass
class _Page:
    kind: int = -1
    uncompressed: int = -1
    compressed: int = -1
    values: int = 0
    encoding: int | None = None
    data_at: int = 0  # where the page's (compressed) bytes begin


@dataclass
class ChunkPages:
    pages: int = 0
    dictionary: _Page | None = None
    data_bytes: int = 0  # declared uncompressed size of the data pages
    values: int = 0
    dictionary_encoded_values: int = 0
    delta_byte_array_bytes: int = 0  # DELTA_BYTE_ARRAY pages: values x page size (each may repeat the page)


def read_chunk_pages(fh: BinaryIO, start: int, length: int, max_pages: int) -> ChunkPages:
    """Walk the pages of one column chunk, from its first page (dictionary or data) over `length` bytes,
    the range Arrow reads. Raises DamagedPage for a header that cannot be read, TooManyPages past
    max_pages."""
    chunk = ChunkPages()
    position, end = start, start + length
    while position < end:
        if chunk.pages >= max_pages:
            raise TooManyPages("the file has too many pages; write it with fewer, larger row groups")
        cursor = _Cursor(fh, position)
        page = _read_page_header(cursor)
        page.data_at = cursor.at
        chunk.pages += 1
        if page.kind == _DICTIONARY_PAGE:
            if chunk.dictionary is not None:
                raise DamagedPage("a column chunk has two dictionary pages")
            chunk.dictionary = page
        else:
            chunk.data_bytes += page.uncompressed
            chunk.values += page.values
            if page.encoding in (_PLAIN_DICTIONARY, _RLE_DICTIONARY):
                chunk.dictionary_encoded_values += page.values
            elif page.encoding == _DELTA_BYTE_ARRAY:
                chunk.delta_byte_array_bytes += page.values * page.uncompressed
        position = page.data_at + page.compressed
    return chunk


def decoded_estimate(fh: BinaryIO, chunk: ChunkPages, *, codec: str, byte_array: bool, value_width: int,
                     as_dictionary: bool, budget: int) -> int:
    """An upper bound on what Arrow will hold to decode the chunk. The dictionary page is only
    decompressed (to find its longest value) when the cheap bound is over `budget` and the page fits it."""
    dictionary = chunk.dictionary
    dictionary_bytes = (dictionary.uncompressed + dictionary.values * BYTES_PER_VALUE) if dictionary else 0
    estimate = (dictionary_bytes + chunk.data_bytes * (DICTIONARY_BUILD_FACTOR if as_dictionary else 1)
                + chunk.values * (BYTES_PER_VALUE + value_width) + chunk.delta_byte_array_bytes)
    if not (byte_array and dictionary and chunk.dictionary_encoded_values):
        return estimate
    longest = dictionary.uncompressed  # no value is longer than its dictionary page
    if (estimate + chunk.dictionary_encoded_values * longest > budget and dictionary.uncompressed <= budget
            and dictionary.compressed <= budget):
        longest = _longest_dictionary_value(fh, dictionary, codec)
    return estimate + chunk.dictionary_encoded_values * longest


def _longest_dictionary_value(fh: BinaryIO, page: _Page, codec: str) -> int:
    """The longest value of a PLAIN-encoded BYTE_ARRAY dictionary page (4-byte length, then bytes), or
    the page's size where it cannot be read here (an old codec, a damaged page: Arrow will say)."""
    if page.values > _MAX_DICTIONARY_ENTRIES_PARSED or (codec != "UNCOMPRESSED" and codec not in _CODECS):
        return page.uncompressed
    fh.seek(page.data_at)
    data = fh.read(page.compressed)
    try:
        if codec != "UNCOMPRESSED":
            data = pa.decompress(data, decompressed_size=page.uncompressed, codec=_CODECS[codec], asbytes=True)
    except (pa.ArrowException, ValueError):
        return page.uncompressed
    longest, position = 0, 0
    for _ in range(page.values):
        if position + 4 > len(data):
            return page.uncompressed
        (length,) = struct.unpack_from("<I", data, position)
        longest = max(longest, length)
        position += 4 + length
    return longest


class _Cursor:
    def __init__(self, fh: BinaryIO, at: int) -> None:
        self.fh, self.at, self.start = fh, at, at
        self.buffer, self.buffer_at = b"", at
        self.read = 0

    def byte(self) -> int:
        index = self.at - self.buffer_at
        if not 0 <= index < len(self.buffer):
            self.fh.seek(self.at)
            self.buffer, self.buffer_at, index = self.fh.read(_READ_AHEAD), self.at, 0
            if not self.buffer:
                raise DamagedPage("the file ends inside a page header")
        self.read += 1
        if self.read > _MAX_HEADER_BYTES_READ:
            raise DamagedPage("a page header is too long")
        self.at += 1
        return self.buffer[index]

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise DamagedPage("a page header holds a malformed number")

    def zigzag(self) -> int:
        value = self.varint()
        return (value >> 1) ^ -(value & 1)

    def skip(self, count: int) -> None:
        if count < 0:
            raise DamagedPage("a page header holds a negative length")
        self.at += count


# Thrift compact protocol types.
_I32, _STRUCT = 5, 12


def _fields(cursor: _Cursor):
    """(field id, type) of each field of a struct, up to its end."""
    last = 0
    while True:
        head = cursor.byte()
        if head == 0:
            return
        delta, kind = head >> 4, head & 0x0F
        last = last + delta if delta else cursor.zigzag()
        yield last, kind


def _skip(cursor: _Cursor, kind: int, depth: int = 0, in_list: bool = False) -> None:
    if depth > 16:
        raise DamagedPage("a page header nests too deeply")
    if kind in (1, 2):  # booleans: in the field header, but one byte each inside a list
        if in_list:
            cursor.skip(1)
    elif kind == 3:
        cursor.skip(1)
    elif kind in (4, 5, 6):
        cursor.varint()
    elif kind == 7:
        cursor.skip(8)
    elif kind == 8:
        cursor.skip(cursor.varint())
    elif kind in (9, 10):
        head = cursor.byte()
        size, item_kind = head >> 4, head & 0x0F
        if size == 15:
            size = cursor.varint()
        if size > _MAX_LIST_ITEMS:
            raise DamagedPage("a page header holds an implausibly long list")
        for _ in range(size):
            _skip(cursor, item_kind, depth + 1, in_list=True)
    elif kind == 11:
        size = cursor.varint()
        if size > _MAX_LIST_ITEMS:
            raise DamagedPage("a page header holds an implausibly long map")
        if size:
            kinds = cursor.byte()
            for _ in range(size):
                _skip(cursor, kinds >> 4, depth + 1, in_list=True)
                _skip(cursor, kinds & 0x0F, depth + 1, in_list=True)
    elif kind == _STRUCT:
        for _, field_kind in _fields(cursor):
            _skip(cursor, field_kind, depth + 1)
    elif kind == 13:
        cursor.skip(16)
    else:
        raise DamagedPage(f"a page header holds an unknown field type {kind}")


# PageHeader: 2 uncompressed_page_size, 3 compressed_page_size; 5 DataPageHeader, 7 DictionaryPageHeader
# and 8 DataPageHeaderV2 each start with 1 num_values; the encoding is field 2 of v1, 4 of v2.
_HEADER_ENCODING_FIELD = {5: 2, 8: 4}


def _read_page_header(cursor: _Cursor) -> _Page:
    page = _Page()
    for field_id, kind in _fields(cursor):
        if field_id == 1 and kind == _I32:
            page.kind = cursor.zigzag()
        elif field_id == 2 and kind == _I32:
            page.uncompressed = cursor.zigzag()
        elif field_id == 3 and kind == _I32:
            page.compressed = cursor.zigzag()
        elif field_id in (5, 7, 8) and kind == _STRUCT:
            for inner_id, inner_kind in _fields(cursor):
                if inner_id == 1 and inner_kind == _I32:
                    page.values = cursor.zigzag()
                elif inner_id == _HEADER_ENCODING_FIELD.get(field_id) and inner_kind == _I32:
                    page.encoding = cursor.zigzag()
                else:
                    _skip(cursor, inner_kind)
        else:
            _skip(cursor, kind)
    if page.uncompressed < 0 or page.compressed < 0 or page.values < 0:
        raise DamagedPage("a page header lacks its sizes")
    return page
