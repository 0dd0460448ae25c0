"""The scanner against hostile files (finding 3 of the security review): every size a file controls —
lines, records, values, nesting, columns, Parquet row groups and decoded totals — is bounded before the
work it would cause, reported by line (or row) and column, and the scan's memory stays bounded whatever
the file holds (measured in a child process)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.data.profile import ColumnStats, LabelBudget
from app.data.scan import ScanLimits, iter_records, scan_file

CSV = b"text,label\ngreat film,pos\nawful film,neg\nfine film,pos\n"
TSV = b"text\tlabel\ngreat film\tpos\nawful film\tneg\nfine film\tpos\n"
JSONL = b'{"text": "great film", "label": "pos"}\n{"text": "awful film", "label": "neg"}\n' \
        b'{"text": "fine film", "label": "pos"}\n'
ROWS = [{"text": "great film", "label": "pos"}, {"text": "awful film", "label": "neg"},
        {"text": "fine film", "label": "pos"}]


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def write_parquet(tmp_path: Path, name: str, columns: dict[str, list]) -> Path:
    path = tmp_path / name
    pq.write_table(pa.table(columns), path)
    return path


def error_lines(result) -> list[int | None]:
    return [e.line for e in result.errors]


# Hostile files: every size a file controls is bounded, and named by line (or row) and column -----------------


TINY = ScanLimits(max_row_bytes=200, max_cell_bytes=64, max_nesting_depth=4, max_columns=5)


def problems(result) -> list[tuple[int | None, str | None]]:
    return [(e.line, e.column) for e in result.errors]


@pytest.mark.parametrize("name", ["data.csv", "data.jsonl"])
def test_line_longer_than_max_row_bytes_is_skipped_and_named(tmp_path, name):
    long_value = "x" * 300
    if name.endswith(".csv"):
        content = f"text,label\na,x\n{long_value},y\nc,z\n".encode()
    else:
        content = (f'{{"text": "a", "label": "x"}}\n{{"text": "{long_value}", "label": "y"}}\n'
                   f'{{"text": "c", "label": "z"}}\n').encode()
    path = write(tmp_path, name, content)
    result = scan_file(path, limits=TINY)
    assert problems(result) == [(3 if name.endswith(".csv") else 2, None)]
    assert "longer than 200 bytes (FT_MAX_ROW_BYTES)" in result.errors[0].message
    assert result.rows == 2  # the lines after it are read as usual
    assert [r["text"] for r in iter_records(path, result.format, TINY)] == ["a", "c"]


def test_a_line_of_hundreds_of_megabytes_is_never_held_whole(tmp_path):
    path = tmp_path / "data.jsonl"
    with open(path, "wb") as fh:
        fh.write(b'{"text": "' + b"x" * (20 * 2**20) + b'"}\n{"text": "after"}\n')
    result = scan_file(path)
    assert problems(result) == [(1, None)]
    assert f"it is {20 * 2**20 + 13:,} bytes" in result.errors[0].message
    assert result.rows == 1


def test_csv_cell_larger_than_max_cell_bytes_names_line_and_column(tmp_path):
    path = write(tmp_path, "data.csv", b"text,label\nshort,a\n" + b"y" * 100 + b",b\nok,c\n")
    result = scan_file(path, limits=TINY)
    assert problems(result) == [(3, "text")]
    assert "100 bytes; at most 64 (FT_MAX_CELL_BYTES)" in result.errors[0].message
    assert result.rows == 2


def test_csv_record_running_past_max_row_bytes_stops_at_the_unclosed_quote(tmp_path):
    content = b'text,label\nok,a\n"never closed,b\n' + b"more words,c\n" * 40
    result = scan_file(write(tmp_path, "data.csv", content), limits=TINY)
    assert problems(result) == [(3, None)]
    message = result.errors[0].message
    assert "begins on line 3" in message and "double quote opened on line 3" in message
    assert "FT_MAX_ROW_BYTES" in message
    assert result.rows == 1


def test_csv_quoted_multiline_record_within_the_limit_is_read(tmp_path):
    path = write(tmp_path, "data.csv", b'text,label\n"one\ntwo\nthree",a\n')
    result = scan_file(path, limits=TINY)
    assert result.errors == [] and list(iter_records(path, "csv", TINY)) == [{"text": "one\ntwo\nthree", "label": "a"}]


def test_jsonl_value_larger_than_max_cell_bytes_names_line_and_column(tmp_path):
    content = (b'{"text": "a", "label": "x"}\n'
               b'{"text": "b", "tags": [' + b", ".join([b'"tag"'] * 20) + b']}\n')
    result = scan_file(write(tmp_path, "data.jsonl", content), limits=TINY)
    assert problems(result) == [(2, "tags")]
    assert "at most 64 (FT_MAX_CELL_BYTES)" in result.errors[0].message
    assert result.rows == 1


def test_jsonl_nesting_deeper_than_the_limit_names_the_line(tmp_path):
    def nested(levels: int) -> str:  # the record itself is the first level
        return '{"a": ' + "[" * (levels - 1) + "1" + "]" * (levels - 1) + "}"

    content = f'{nested(4)}\n{nested(5)}\n{{"a": "[[[[[[[[[[ in a string nests nothing"}}\n'.encode()
    result = scan_file(write(tmp_path, "data.jsonl", content), limits=TINY)
    assert problems(result) == [(2, None)]
    assert "more than 4 levels deep (FT_MAX_NESTING_DEPTH)" in result.errors[0].message
    assert result.rows == 2


def test_jsonl_hundred_thousand_levels_deep_is_an_error_not_an_exception(tmp_path):
    content = (b'{"text": "ok"}\n'
               b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
               b'{"a":' + b"[" * 100_000 + b"\n"  # never closed: the parser would recurse before failing
               b'{"a":' + b'[{"b":' * 50_000 + b"\n")
    result = scan_file(write(tmp_path, "data.jsonl", content))
    assert problems(result) == [(2, None), (3, None), (4, None)]
    assert all("levels deep" in e.message for e in result.errors)
    assert result.rows == 1


def test_huge_numbers_are_refused_or_kept_as_text(tmp_path):
    jsonl = scan_file(write(tmp_path, "data.jsonl", b'{"n": 1}\n{"n": ' + b"9" * 5000 + b"}\n"))
    assert problems(jsonl) == [(2, None)] and "5,000 digits" in jsonl.errors[0].message
    # In a CSV a 400-digit "number" is an identifier: text, not a float that overflows the statistics.
    path = write(tmp_path, "data.csv", b"id,label\n" + b"7" * 400 + b",a\n")
    assert scan_file(path).errors == []
    assert list(iter_records(path, "csv")) == [{"id": "7" * 400, "label": "a"}]


def test_too_many_columns(tmp_path):
    header = ",".join(f"c{i}" for i in range(8)).encode()
    result = scan_file(write(tmp_path, "data.csv", header + b"\n" + b"1," * 7 + b"1\n"), limits=TINY)
    assert problems(result) == [(1, "c5")] and "more than 5 columns" in result.errors[0].message
    # In JSONL a column may first appear on any line: the line that adds one too many is refused.
    lines = [json.dumps({f"k{i}": 1 for i in range(n)}) for n in (3, 5, 6)]
    result = scan_file(write(tmp_path, "data.jsonl", "\n".join(lines).encode() + b"\n"), limits=TINY)
    assert problems(result) == [(3, "k5")]
    assert result.columns == [f"k{i}" for i in range(5)] and result.rows == 2


# NUL characters are refused wherever text is --------------------------------------------------------------

def test_nul_in_a_csv_cell_names_line_and_column(tmp_path):
    path = write(tmp_path, "data.csv", b"text,label\nfine,a\nbad\x00text,b\nok,c\n")
    result = scan_file(path)
    assert problems(result) == [(3, "text")]
    assert "NUL" in result.errors[0].message and "remove it" in result.errors[0].message
    assert [r["text"] for r in iter_records(path, "csv")] == ["fine", "ok"]


def test_nul_in_jsonl_text_at_any_depth_names_line_and_column(tmp_path):
    content = (b'{"text": "fine", "meta": {"tags": ["a", "b"]}}\n'
               b'{"text": "fine", "meta": {"tags": ["a", "b\\u0000c"]}}\n'
               b'{"te\\u0000xt": "key with a NUL"}\n'
               b'{"text": "a backslash then u0000 is text: \\\\u0000"}\n')
    result = scan_file(write(tmp_path, "data.jsonl", content))
    assert problems(result) == [(2, "meta"), (3, "te\\x00xt")]  # quoted as an escape: reports are stored as JSON
    assert all("NUL" in e.message for e in result.errors)
    assert result.rows == 2


def test_nul_in_parquet_text_names_row_and_column(tmp_path):
    path = write_parquet(tmp_path, "data.parquet", {
        "text": ["fine", "bad\x00", "fine", "fine"],
        "tags": [["a"], ["b"], ["c\x00"], ["d"]],
        "label": pa.array(["x", "y", "x", "z\x00"]).dictionary_encode(),
        "raw": [b"\x00binary is not text", b"", b"", b""],
    })
    result = scan_file(path)
    assert problems(result) == [(2, "text"), (3, "tags"), (4, "label")]
    assert all("NUL" in e.message for e in result.errors)
    assert result.rows == 1


def test_unpaired_surrogate_in_jsonl_text_names_line_and_column(tmp_path):
    content = b'{"text": "emoji \\ud83d\\ude00 is fine"}\n{"text": "ok", "tags": ["\\ud800"]}\n'
    result = scan_file(write(tmp_path, "data.jsonl", content))
    assert problems(result) == [(2, "tags")] and "surrogate" in result.errors[0].message
    assert result.rows == 1


def test_invalid_utf8_in_parquet_text_names_row_and_column(tmp_path):
    texts = pa.array([b"ok", b"bad \xff", b"ok"], pa.binary()).view(pa.string())
    result = scan_file(write_parquet(tmp_path, "data.parquet", {"text": texts, "n": [1, 2, 3]}))
    assert problems(result) == [(2, "text")] and "UTF-8" in result.errors[0].message
    assert result.rows == 2


# Parquet: bounded before it is decoded ------------------------------------------------------------------

def dictionary_bomb(tmp_path: Path, value_bytes: int, rows: int) -> Path:
    """One long text in the dictionary, referenced by every row: a few KB that decode to value x rows."""
    column = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["z" * value_bytes]))
    path = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"text": column, "label": ["a"] * rows}), path, compression="zstd")
    return path


def test_parquet_dictionary_bomb_is_refused_by_row_group_before_decoding(tmp_path):
    path = dictionary_bomb(tmp_path, 500_000, 100_000)
    assert path.stat().st_size < 10_000
    result = scan_file(path)
    assert result.rows == 0
    assert problems(result) == [(1, "text")]
    message = result.errors[0].message
    assert "Row group 1" in message and "'text'" in message and "row_group_size=" in message


@pytest.mark.parametrize("compression", ["none", "snappy", "gzip", "zstd", "brotli"])
def test_parquet_repeated_dictionary_values_are_counted_by_the_longest_one(tmp_path, compression):
    # Ten 100-byte texts referenced by 1,000 rows: about 120 KB decoded. Counting each row as the whole
    # dictionary page (1 MB) would refuse it; the page is read to find its longest value instead.
    path = tmp_path / "labels.parquet"
    texts = [f"{i}" + "t" * 99 for i in range(10)]
    pq.write_table(pa.table({"text": [texts[i % 10] for i in range(1000)]}), path, compression=compression)
    assert scan_file(path, limits=ScanLimits(max_row_group_bytes=300_000)).errors == []
    refused = scan_file(path, limits=ScanLimits(max_row_group_bytes=100_000))
    assert problems(refused) == [(1, "text")]


def test_parquet_cell_and_row_over_the_limits_name_row_and_column(tmp_path):
    path = write_parquet(tmp_path, "data.parquet", {
        "text": ["short", "z" * 100, "short", "y" * 60],
        "notes": ["", "", "", "w" * 60],
        "tags": [["a"], ["b"], ["c"] * 40, ["d"]],
    })
    limits = ScanLimits(max_row_bytes=110, max_cell_bytes=64)
    result = scan_file(path, limits=limits)
    assert problems(result) == [(2, "text"), (3, "tags"), (4, "text")]
    assert "FT_MAX_CELL_BYTES" in result.errors[0].message and "FT_MAX_ROW_BYTES" in result.errors[2].message
    assert [r["text"] for r in iter_records(path, "parquet", limits)] == ["short"]


def test_parquet_cells_of_a_dictionary_are_measured_per_row(tmp_path):
    path = dictionary_bomb(tmp_path, 100, 50)
    result = scan_file(path, limits=ScanLimits(max_cell_bytes=64))
    assert result.error_count == 50 and problems(result)[:2] == [(1, "text"), (2, "text")]


def test_parquet_nesting_depth_comes_from_the_schema(tmp_path):
    path = write_parquet(tmp_path, "data.parquet", {"ok": [[[1]]], "deep": [[[[[1]]]]]})
    result = scan_file(path, limits=TINY)
    assert problems(result) == [(None, "deep")]
    assert "5 levels deep" in result.errors[0].message and result.rows == 0


def test_parquet_row_group_too_large_names_group_column_and_fix(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": [f"row {i} " * 10 for i in range(400)], "label": [1] * 400}), path,
                   row_group_size=100)
    result = scan_file(path, limits=ScanLimits(max_row_group_bytes=6_000))
    assert problems(result)[:2] == [(1, "text"), (101, "text")] and result.error_count == 4
    assert "Row group 1 (rows 1 to 100)" in result.errors[0].message
    assert "row_group_size=" in result.errors[0].message
    assert scan_file(path, limits=ScanLimits(max_row_group_bytes=40_000)).errors == []


def _understate_footer(path: Path, true_size: int, claimed: int) -> None:
    """Rewrite the footer's total_uncompressed_size (a Thrift varint) to claim less, keeping its length."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    data = bytearray(path.read_bytes())
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    honest = varint(2 * true_size)  # zigzag
    padded = bytearray(varint(2 * claimed).ljust(len(honest), b"\x00"))
    for i in range(len(varint(2 * claimed)) - 1, len(honest) - 1):
        padded[i] |= 0x80  # a longer, still valid encoding of the small number
    at = data.index(honest, footer_start)
    data[at:at + len(honest)] = padded
    path.write_bytes(bytes(data))


def test_parquet_footer_that_understates_sizes_is_caught_by_the_page_headers(tmp_path):
    path = tmp_path / "liar.parquet"
    pq.write_table(pa.table({"text": ["0" * 3_000_000]}), path, compression="zstd", use_dictionary=False)
    true_size = pq.ParquetFile(path).metadata.row_group(0).column(0).total_uncompressed_size
    _understate_footer(path, true_size, 100)
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).total_uncompressed_size == 100
    result = scan_file(path, limits=ScanLimits(max_row_group_bytes=1_000_000))
    assert problems(result) == [(1, "text")] and "Row group 1" in result.errors[0].message


def test_parquet_decoding_to_more_than_max_decoded_bytes_stops(tmp_path):
    path = dictionary_bomb(tmp_path, 1000, 2000)
    result = scan_file(path, limits=ScanLimits(max_decoded_bytes=100_000))
    assert problems(result) == [(100, None)] and "decodes to more than 100,000 bytes" in result.errors[0].message
    assert result.rows == 99  # 1,003 bytes each


def test_parquet_truncated_or_encrypted_files_are_named(tmp_path):
    good = write_parquet(tmp_path, "good.parquet", {"text": ["a", "b"]}).read_bytes()
    result = scan_file(write(tmp_path, "cut.parquet", good[:-3]))
    assert "damaged or cut short" in result.errors[0].message
    result = scan_file(write(tmp_path, "enc.parquet", good[:-4] + b"PARE"))
    assert "encrypted" in result.errors[0].message


# Statistics stay small --------------------------------------------------------------------------------------

def test_long_values_are_not_label_candidates(tmp_path):
    content = b"text,label\n" + b"".join(b"%s,%s\n" % (b"t" * 300, lab) for lab in (b"pos", b"neg", b"pos"))
    profile = scan_file(write(tmp_path, "data.csv", content)).profile()
    assert profile["text"]["distinct"] is None  # text, not labels
    assert profile["label"]["distinct"] == {"pos": 2, "neg": 1}
    jsonl = b'{"tags": ["B-PER", "O"]}\n{"tags": ["' + b"o" * 300 + b'"]}\n'
    assert scan_file(write(tmp_path, "data.jsonl", jsonl)).profile()["tags"]["item_distinct"] is None


def test_remembered_labels_share_one_budget():
    budget = LabelBudget(capacity=3 * 105)
    first, second = ColumnStats(budget=budget), ColumnStats(budget=budget)
    for value in ("aaaaa", "bbbbb", "aaaaa"):
        first.add(value, 1)
    second.add("ccccc", 1)
    second.add("ddddd", 1)  # over the shared budget: this column is no longer a label candidate
    assert first.distinct == {"aaaaa": 2, "bbbbb": 1} and second.distinct is None
    assert budget.left == 105  # what the dropped column held is given back


# Memory: hostile files scanned in a child process, so that its peak is the scan's own ------------------------

_MEASURE = """
import json, sys
from pathlib import Path
from app.data.scan import scan_file

def megabytes(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

scan_file(Path(sys.argv[2]))  # warm: imports and first-use allocations, as in a running API
before = megabytes("VmRSS")
result = scan_file(Path(sys.argv[1]))
print(json.dumps({"growth_mb": megabytes("VmHWM") - before, "rows": result.rows,
                  "errors": [[e.line, e.column, e.message] for e in result.errors]}))
"""
MEMORY_BOUND_MB = 150


def scan_in_child(path: Path, warm: Path) -> dict:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(warm)], cwd=repo, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_memory_of_a_parquet_dictionary_bomb_stays_bounded(tmp_path):
    # 600 KB of text referenced by 100,000 rows: 60 GB decoded from a file of a few KB.
    path = dictionary_bomb(tmp_path, 600_000, 100_000)
    assert path.stat().st_size < 10_000
    report = scan_in_child(path, write_parquet(tmp_path, "warm.parquet", {"text": ["a"]}))
    assert report["growth_mb"] < MEMORY_BOUND_MB, report["growth_mb"]
    assert report["rows"] == 0 and [e[:2] for e in report["errors"]] == [[1, "text"]]


def test_memory_of_hostile_jsonl_stays_bounded(tmp_path):
    path = tmp_path / "hostile.jsonl"
    with open(path, "wb") as fh:
        fh.write(b'{"text": "' + b"x" * (10 * 2**20) + b'"}\n')  # line 1: 10 MB
        braces = b'{"text": "t", "x": [' + b",".join([b"{}"] * 340_000) + b"]}\n"  # 1 MB of {} per line
        for _ in range(5):
            fh.write(braces)
        fh.write(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")  # line 7
    report = scan_in_child(path, write(tmp_path, "warm.jsonl", b'{"text": "a"}\n'))
    assert report["growth_mb"] < MEMORY_BOUND_MB, report["growth_mb"]
    assert [e[:2] for e in report["errors"]] == [[1, None]] + [[n, "x"] for n in range(2, 7)] + [[7, None]]


def test_memory_of_a_parquet_row_group_at_the_budget_stays_bounded(tmp_path):
    # The worst a row group under max_row_group_bytes (64 MiB) can do: one row of 2.9 million short
    # texts, all decoded by Arrow before the row can be measured and refused.
    path = tmp_path / "one_huge_row.parquet"
    items = pa.array(["ab"] * 2_900_000)
    row = pa.ListArray.from_arrays(pa.array([0, len(items)], pa.int32()), items)
    pq.write_table(pa.table({"tokens": row}), path, use_dictionary=False)
    report = scan_in_child(path, write_parquet(tmp_path, "warm.parquet", {"text": ["a"]}))
    assert report["growth_mb"] < MEMORY_BOUND_MB, report["growth_mb"]
    assert [e[:2] for e in report["errors"]] == [[1, "tokens"]]
    assert "FT_MAX_CELL_BYTES" in report["errors"][0][2]
