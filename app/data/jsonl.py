"""JSON Lines records, each bounded before it is parsed or kept: the line by max_row_bytes, its nesting by
max_nesting_depth, each top-level value by max_cell_bytes, and no text (key or value, at any depth) may
hold a NUL character."""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from app.data.delimited import MAX_NUMBER_CHARS
from app.data.lines import bounded_lines
from app.data.profile import MAX_NULL_LINES, ScanResult, clip, name_problem

# Strings are taken out before brackets are counted: "[[[" inside a string nests nothing.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST_PAIR = re.compile(rb"\{\}|\[\]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@functools.lru_cache(maxsize=8)
def _openers(limit: int) -> re.Pattern[bytes]:
    return re.compile(rb"[\[{]{%d}" % (limit + 1))


class _BadNumber(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _reject_constant(name: str) -> Any:
    raise _BadNumber(f"the number {name}, which JSON does not allow; use null for a missing value")


def _finite_float(text: str) -> float:
    # NaN and Infinity are not JSON (and no database's JSON type stores them): refuse them here.
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"the number {clip(text, 40)}, which JSON does not allow; use null for a missing value")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _BadNumber(f"a number of {len(text):,} digits; at most {MAX_NUMBER_CHARS} (write it as a string)")
    return int(text)


def nesting_exceeds(text: str, limit: int) -> bool:
    """Whether the JSON text nests lists and objects more than `limit` levels deep, found without
    parsing (so without recursion). Only a line holding more than `limit` brackets can, so most lines
    cost two counts. The others are reduced to their brackets (strings taken out first) and peeled:
    a quick pass removes one or two levels of innermost pairs, which settles most lines (a long line
    of shallow objects goes in one pass); only an ambiguous depth is peeled exactly, one level a pass."""
    if text.count("{") + text.count("[") <= limit:
        return False
    skeleton = _STRING.sub("", text).encode("utf-8", "surrogatepass").translate(None, _NOT_BRACKETS)
    quick, passes = skeleton, 0
    while quick:
        shorter = quick.replace(b"{}", b"").replace(b"[]", b"")
        if len(shorter) == len(quick):
            # Unbalanced, so invalid, but the parser would recurse into a long run of openers first.
            return len(quick) > limit and _openers(limit).search(quick) is not None
        quick, passes = shorter, passes + 1
        if passes > limit:
            return True  # each pass removed at least one level
    if 2 * passes <= limit:
        return False  # and at most two
    for _ in range(limit):
        skeleton, peeled = _INNERMOST_PAIR.subn(b"", skeleton)
        if not skeleton or not peeled:
            return False
    return bool(_INNERMOST_PAIR.search(skeleton))


def scan_jsonl(path: Path, result: ScanResult) -> Iterator[tuple[int, dict[str, Any]]]:
    limits = result.limits
    row_lines: list[int] = []  # the first rows' lines, for a key that only appears later
    for line in bounded_lines(path, result):
        number, text = line.number, line.text
        if text is None or not text.strip():
            continue
        if nesting_exceeds(text, limits.max_nesting_depth):
            result.error(f"Line {number} nests lists and objects more than {limits.max_nesting_depth} levels deep "
                         "(FT_MAX_NESTING_DEPTH); flatten it.", line=number)
            continue
        try:
            record = json.loads(text.rstrip("\r\n"), parse_constant=_reject_constant, parse_float=_finite_float,
                                parse_int=_bounded_int)
        except json.JSONDecodeError as exc:
            result.error(f"Invalid JSON on line {number}, column {exc.colno}: {exc.msg}.", line=number)
            continue
        except _BadNumber as exc:
            result.error(f"Line {number} has {exc.message}.", line=number)
            continue
        except ValueError as exc:
            result.error(f"Line {number} cannot be read as JSON: {clip(str(exc), 200)}.", line=number)
            continue
        except RecursionError:  # the depth check above should make this unreachable; never a 500
            result.error(f"Line {number} nests lists and objects too deeply; flatten it.", line=number)
            continue
        if not isinstance(record, dict):
            result.error(f"Line {number} is a JSON {type(record).__name__}, not an object.", line=number)
            continue
        if _bad_value(result, number, text, line.size, record) or _bad_new_key(result, number, record):
            continue
        for key in record:
            if key not in result.stats:
                if result.rows:
                    # Earlier rows lacked this key: they count as missing values.
                    result.stats[key] = result.new_stats(nulls=result.rows, null_lines=row_lines[:MAX_NULL_LINES])
                else:
                    result.stats[key] = result.new_stats()
                result.columns.append(key)
        if len(row_lines) < MAX_NULL_LINES:
            row_lines.append(number)
        yield number, record


def _bad_new_key(result: ScanResult, number: int, record: dict[str, Any]) -> bool:
    count = len(result.columns)
    for key in record:
        if key not in result.stats:
            count += 1
            problem = name_problem(key, result.limits, count)
            if problem:
                result.error(f"Line {number}: {problem}", line=number, column=clip(key))
                return True
    return False


def _bad_value(result: ScanResult, number: int, text: str, size: int, record: dict[str, Any]) -> bool:
    """Report the first top-level value that is too big or holds a NUL. A NUL can only be written as
    \\u0000 (JSON refuses raw control characters) and no value is bigger than its line, so the values are
    only looked at when the line could hold one."""
    limit = result.limits.max_cell_bytes
    if "\\u0000" in text:
        for key, value in record.items():
            if _holds_text(key, value, _has_nul):
                result.error(f"Line {number}, column '{clip(key)}': a text holds a NUL character (\\u0000); "
                             "remove it.", line=number, column=clip(key))
                return True
    # An escaped UTF-16 surrogate without its pair decodes to no character: it cannot be stored or
    # tokenized. Paired ones (an emoji written as two escapes) decode to one character and are fine.
    if _SURROGATE_ESCAPE.search(text):
        for key, value in record.items():
            if _holds_text(key, value, _has_lone_surrogate):
                result.error(f"Line {number}, column '{clip(key)}': a text holds an unpaired surrogate escape "
                             "(\\ud800-\\udfff), which is not a character; remove it or write the character "
                             "itself.", line=number, column=clip(key))
                return True
    if size > limit:
        for key, value in record.items():
            value_bytes = _json_size(value)
            if value_bytes > limit:
                result.error(f"Line {number}, column '{clip(key)}': the value is {value_bytes:,} bytes; at most "
                             f"{limit:,} (FT_MAX_CELL_BYTES). Shorten it.", line=number, column=clip(key))
                return True
    return False


def _holds_text(key: str, value: Any, bad: Callable[[str], bool]) -> bool:
    pending = [key, value]  # a stack, not recursion: depth was checked, but a walk needs no limit of its own
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if bad(item):
                return True
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
    return False


def _has_nul(text: str) -> bool:
    return "\x00" in text


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _json_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
