"""What a scan learns about a file: per-column statistics (the profile jobs are validated against) and
every problem found, each with its line (or row) and column. Memory here is bounded whatever the file
holds: problems are capped, and only short values are remembered as label candidates."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from app.data.limits import ScanLimits

MAX_REPORTED = 100  # problems listed per file; the count says how many more there were
MAX_DISTINCT = 1000  # distinct values remembered per column (enough to know a label set)
MAX_NULL_LINES = 20
# A label is short: a longer value means the column is text, not labels (its `distinct` becomes None),
# so no column ever keeps 1000 copies of half-megabyte cells.
MAX_LABEL_CHARS = 256
# All columns' remembered values together (characters plus ~100 bytes of bookkeeping each): a file with
# a thousand columns of near-label values cannot hold 1000 x 1000 x 256 characters. A column that would
# pass it stops being a label candidate, as if it had too many distinct values.
LABEL_MEMORY_BUDGET = 24 * 2**20
_ENTRY_OVERHEAD = 100
MAX_NAME_CHARS = 256  # a column name is also a key of every stored profile and report


class LabelBudget:
    """Bytes left for remembered label values, shared by the columns of one scan."""

    def __init__(self, capacity: int = LABEL_MEMORY_BUDGET) -> None:
        self.left = capacity

    def take(self, key: str) -> bool:
        cost = len(key) + _ENTRY_OVERHEAD
        if cost > self.left:
            return False
        self.left -= cost
        return True

    def give_back(self, seen: dict[str, int]) -> None:
        self.left += sum(len(key) + _ENTRY_OVERHEAD for key in seen)


@dataclass
class Problem:
    message: str
    line: int | None = None
    column: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "message": self.message}


@dataclass
class ColumnStats:
    non_null: int = 0
    nulls: int = 0
    null_lines: list[int] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)
    kind_lines: dict[str, int] = field(default_factory=dict)  # first line holding each kind of value
    distinct: dict[str, int] | None = field(default_factory=dict)  # None: too many, or too long, to be labels
    all_integer: bool = True
    num_min: float | None = None
    num_max: float | None = None
    num_sum: float = 0.0
    num_sumsq: float = 0.0
    text_chars: int = 0
    text_chars_max: int = 0
    list_len_max: int = 0
    item_kinds: Counter = field(default_factory=Counter)
    item_distinct: dict[str, int] | None = field(default_factory=dict)
    budget: LabelBudget = field(default_factory=LabelBudget, repr=False, compare=False)

    def add(self, value: Any, line: int) -> None:
        if value is None:
            self.nulls += 1
            if len(self.null_lines) < MAX_NULL_LINES:
                self.null_lines.append(line)
            return
        self.non_null += 1
        kind = _kind(value)
        self.kinds[kind] += 1
        self.kind_lines.setdefault(kind, line)
        if kind in ("int", "float"):
            v = float(value)
            self.num_sum += v
            self.num_sumsq += v * v
            self.num_min = v if self.num_min is None else min(self.num_min, v)
            self.num_max = v if self.num_max is None else max(self.num_max, v)
            self.all_integer &= kind == "int" or v.is_integer()
        elif kind == "str":
            self.text_chars += len(value)
            self.text_chars_max = max(self.text_chars_max, len(value))
        elif kind == "list":
            self.list_len_max = max(self.list_len_max, len(value))
            for item in value:
                self.item_kinds[_kind(item)] += 1
                self.item_distinct = self._remember(self.item_distinct, item)
        if kind != "list" and kind != "dict":
            self.distinct = self._remember(self.distinct, value)

    def _remember(self, seen: dict[str, int] | None, value: Any) -> dict[str, int] | None:
        # Only JSON scalars name labels; lists, objects and Parquet-only types (bytes, dates) do not.
        if seen is None or not isinstance(value, (str, int, float)) and value is not None:
            return seen
        key = value_key(value)
        if key in seen:
            seen[key] += 1
            return seen
        if len(key) > MAX_LABEL_CHARS or len(seen) >= MAX_DISTINCT or not self.budget.take(key):
            self.budget.give_back(seen)
            return None
        seen[key] = 1
        return seen

    def as_dict(self) -> dict[str, Any]:
        return {
            "non_null": self.non_null, "nulls": self.nulls, "null_lines": self.null_lines,
            "kinds": dict(self.kinds), "kind_lines": self.kind_lines, "distinct": self.distinct,
            "all_integer": self.all_integer, "min": self.num_min, "max": self.num_max,
            # Numbers near float's range overflow the sums (1e200² is inf), and no database stores inf.
            "sum": _finite(self.num_sum), "sumsq": _finite(self.num_sumsq),
            "text_chars_mean": (self.text_chars / self.kinds["str"]) if self.kinds["str"] else 0,
            "text_chars_max": self.text_chars_max, "list_len_max": self.list_len_max,
            "item_kinds": dict(self.item_kinds), "item_distinct": self.item_distinct,
        }


def _finite(number: float) -> float | None:
    return number if math.isfinite(number) else None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list"
    return "dict"


def value_key(value: Any) -> str:
    """How a label value is named everywhere (profiles, label names): text as is, others as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def clip(text: str, chars: int = 60) -> str:
    """A value or name quoted in a message: enough to find it, never the whole of a huge one."""
    return text if len(text) <= chars else text[:chars] + "…"


@dataclass
class ScanResult:
    format: str | None
    limits: ScanLimits = field(default_factory=ScanLimits, repr=False)
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    stats: dict[str, ColumnStats] = field(default_factory=dict)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    error_count: int = 0
    label_budget: LabelBudget = field(default_factory=LabelBudget, repr=False)

    def error(self, message: str, line: int | None = None, column: str | None = None) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append(_storable(Problem(message, line, column)))

    def warn(self, message: str, line: int | None = None, column: str | None = None) -> None:
        if len(self.warnings) < MAX_REPORTED:
            self.warnings.append(_storable(Problem(message, line, column)))

    def new_stats(self, **known: Any) -> ColumnStats:
        return ColumnStats(budget=self.label_budget, **known)

    def add_row(self, record: dict[str, Any], line: int) -> None:
        self.rows += 1
        for name in self.columns:
            self.stats[name].add(record.get(name), line)

    def profile(self) -> dict[str, Any]:
        return {name: s.as_dict() for name, s in self.stats.items()}

    def validation(self) -> dict[str, Any]:
        report: dict[str, Any] = {"errors": [p.as_dict() for p in self.errors],
                                  "warnings": [p.as_dict() for p in self.warnings]}
        if self.error_count > len(self.errors):
            report["errors_not_listed"] = self.error_count - len(self.errors)
        return report


def _storable(problem: Problem) -> Problem:
    """A problem may quote what it is about (a name holding a NUL, an unpaired surrogate); reports are
    stored as JSON, which PostgreSQL refuses with either in it, so both are written out as escapes."""
    def visible(text: str | None) -> str | None:
        if text is None:
            return None
        return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")

    problem.message, problem.column = visible(problem.message), visible(problem.column)
    return problem


def name_problem(name: str, limits: ScanLimits, count: int) -> str | None:
    """Why a column name (the count-th column) cannot be used, or None."""
    if count > limits.max_columns:
        return (f"The file has more than {limits.max_columns} columns; keep only the columns the job needs "
                f"(column '{clip(name)}' is the {count}th).")
    if len(name) > MAX_NAME_CHARS:
        return f"A column name is {len(name)} characters long ('{clip(name)}'); at most {MAX_NAME_CHARS}."
    if "\x00" in name:
        return f"The column name '{clip(name)}' holds a NUL character (\\u0000); remove it."
    return None


def set_columns(result: ScanResult, header: list[str], line: int | None) -> None:
    seen: set[str] = set()
    for index, name in enumerate(header, start=1):
        problem = name_problem(name, result.limits, index)
        if problem:
            result.error(problem, line=line, column=clip(name))
            if index > result.limits.max_columns:
                break
        elif not name:
            result.error(f"Column {index} of the header has no name.", line=line)
        elif name in seen:
            result.error(f"Column name '{name}' appears twice in the header.", line=line, column=name)
        seen.add(name)
    header = header[: result.limits.max_columns]
    result.columns = header
    result.stats = {h: result.new_stats() for h in header}
