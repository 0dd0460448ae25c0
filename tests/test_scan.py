"""The streaming scanner: format by content, per-column profile, problems with their line and column."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.data.scan import UnreadableFile, iter_records, scan_file, sniff_format

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


# Formats, recognised by content -----------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "content", "fmt"), [
    ("data.csv", CSV, "csv"),
    ("data.tsv", TSV, "tsv"),
    ("data.jsonl", JSONL, "jsonl"),
    # A misleading extension does not matter: the content decides.
    ("data.jsonl", CSV, "csv"),
    ("data.csv", TSV, "tsv"),
    ("data.tsv", JSONL, "jsonl"),
    ("data", JSONL, "jsonl"),
], ids=["csv", "tsv", "jsonl", "csv-named-jsonl", "tsv-named-csv", "jsonl-named-tsv", "jsonl-no-extension"])
def test_text_formats_recognised_by_content(tmp_path, name, content, fmt):
    path = write(tmp_path, name, content)
    result = scan_file(path, name)
    assert result.format == fmt
    assert result.errors == [] and result.error_count == 0
    assert result.rows == 3
    assert result.columns == ["text", "label"]
    assert list(iter_records(path, fmt)) == ROWS


@pytest.mark.parametrize("name", ["data.parquet", "data.csv", "data.jsonl"])
def test_parquet_recognised_by_content(tmp_path, name):
    path = write_parquet(tmp_path, name, {"text": ["great film", "awful film", "fine film"],
                                          "label": ["pos", "neg", "pos"]})
    result = scan_file(path, name)
    assert result.format == "parquet"
    assert result.errors == []
    assert result.rows == 3 and result.columns == ["text", "label"]
    assert list(iter_records(path, "parquet")) == ROWS


def test_sniff_format():
    assert sniff_format(b"PAR1\x15\x04", "x.csv") == "parquet"
    assert sniff_format(b'\n  {"a": 1}\n', "x.csv") == "jsonl"
    assert sniff_format(b"a,b\n1,2\n", "x.tsv") == "csv"
    assert sniff_format(b"a\tb\n1\t2\n", "x.csv") == "tsv"
    assert sniff_format(b"\xef\xbb\xbfa\tb\n", "") == "tsv"
    # A one-column table has no delimiter to go by: only then does the extension count.
    assert sniff_format(b"text\nhello\n", "x.tsv") == "tsv"
    assert sniff_format(b"text\nhello\n", "x.csv") == "csv"
    with pytest.raises(UnreadableFile, match="JSON Lines"):
        sniff_format(b'[{"a": 1}]', "x.jsonl")


def test_utf8_bom_is_not_part_of_the_first_column(tmp_path):
    for name, content in (("bom.csv", CSV), ("bom.tsv", TSV), ("bom.jsonl", JSONL)):
        path = write(tmp_path, name, b"\xef\xbb\xbf" + content)
        result = scan_file(path, name)
        assert result.errors == [], name
        assert result.columns == ["text", "label"], name
        assert list(iter_records(path, result.format)) == ROWS, name


def test_tsv_value_starting_with_a_quote_does_not_swallow_following_lines(tmp_path):
    content = b'text\tlabel\n"quoted start of a sentence\tpos\nnext line\tneg\n3" tall\tpos\n'
    path = write(tmp_path, "data.tsv", content)
    result = scan_file(path, "data.tsv")
    assert result.format == "tsv"
    assert result.errors == []
    assert result.rows == 3
    assert list(iter_records(path, "tsv")) == [
        {"text": '"quoted start of a sentence', "label": "pos"},
        {"text": "next line", "label": "neg"},
        {"text": '3" tall', "label": "pos"},
    ]


def test_crlf_line_endings(tmp_path):
    path = write(tmp_path, "data.csv", CSV.replace(b"\n", b"\r\n"))
    result = scan_file(path)
    assert result.errors == [] and result.rows == 3
    assert list(iter_records(path, "csv")) == ROWS


# Problems, each with its line ---------------------------------------------------------------------------------

def test_bad_encoding_names_the_line(tmp_path):
    path = write(tmp_path, "data.csv", b"text,label\ngood,pos\ncaf\xe9 latin-1,neg\nok,pos\n")
    result = scan_file(path)
    assert error_lines(result) == [3]
    assert "UTF-8" in result.errors[0].message and "3" in result.errors[0].message


def test_ragged_csv_row_names_the_line(tmp_path):
    path = write(tmp_path, "data.csv", b"text,label\ngood,pos\nhello, world,neg\nok,pos\n")
    result = scan_file(path)
    assert error_lines(result) == [3]
    message = result.errors[0].message
    assert "3 fields" in message and "2" in message
    assert result.rows == 2  # the broken row is not counted


def test_unclosed_quote_points_at_where_it_opened(tmp_path):
    path = write(tmp_path, "data.csv", b'text,label\ngood,pos\n"never closed,neg\nok,pos\nfine,neg\n')
    result = scan_file(path)
    assert error_lines(result) == [3]
    assert "quote" in result.errors[0].message and "line 3" in result.errors[0].message


def test_invalid_json_names_the_line(tmp_path):
    path = write(tmp_path, "data.jsonl", b'{"text": "a", "label": "x"}\n\n{"text": "b", "label": }\n'
                                          b'{"text": "c", "label": "y"}\n')
    result = scan_file(path)
    assert result.format == "jsonl"
    assert error_lines(result) == [3]
    assert "Invalid JSON on line 3" in result.errors[0].message
    assert result.rows == 2


def test_json_array_file_gets_a_clear_message(tmp_path):
    path = write(tmp_path, "data.json", json.dumps(ROWS).encode())
    result = scan_file(path, "data.json")
    assert result.format is None and result.rows == 0
    assert error_lines(result) == [1]
    assert "JSON array" in result.errors[0].message and "one JSON object per line" in result.errors[0].message


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path, "data.jsonl", b'{"text": "a", "label": "x"}\n["b", "y"]\n"c"\n{"text": "d", "label": "y"}\n')
    result = scan_file(path)
    assert error_lines(result) == [2, 3]
    assert "not an object" in result.errors[0].message
    assert result.rows == 2


def test_nan_and_infinity_are_not_json(tmp_path):
    path = write(tmp_path, "data.jsonl", b'{"text": "a", "label": 1.5}\n{"text": "b", "label": NaN}\n'
                                          b'{"text": "c", "label": 1e999}\n')
    result = scan_file(path)
    assert error_lines(result) == [2, 3]
    assert result.rows == 1
    assert result.profile()["label"]["sum"] == 1.5


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf"], ids=["zero-bytes", "blank-lines", "bom-only"])
def test_empty_file(tmp_path, content):
    result = scan_file(write(tmp_path, "data.csv", content))
    assert result.format is None and result.rows == 0
    assert len(result.errors) == 1 and "empty" in result.errors[0].message


@pytest.mark.parametrize(("name", "content"), [("data.csv", b"text,label\n"), ("data.tsv", b"text\tlabel\n\n")],
                         ids=["csv", "tsv"])
def test_header_only(tmp_path, name, content):
    result = scan_file(write(tmp_path, name, content))
    assert result.columns == ["text", "label"] and result.rows == 0
    assert len(result.errors) == 1 and "no data rows" in result.errors[0].message


def test_empty_parquet(tmp_path):
    path = write_parquet(tmp_path, "data.parquet", {"text": pa.array([], pa.string())})
    result = scan_file(path)
    assert result.format == "parquet" and result.rows == 0
    assert "no data rows" in result.errors[0].message


def test_damaged_parquet(tmp_path):
    good = write_parquet(tmp_path, "good.parquet", {"text": ["a", "b"]}).read_bytes()
    result = scan_file(write(tmp_path, "bad.parquet", good[: len(good) // 2]))
    assert result.format == "parquet"
    assert result.errors and "Parquet" in result.errors[0].message


def test_duplicate_header_names(tmp_path):
    result = scan_file(write(tmp_path, "data.csv", b"text,label,text\na,x,b\n"))
    assert len(result.errors) == 1
    assert result.errors[0].line == 1 and result.errors[0].column == "text"
    assert "twice" in result.errors[0].message


def test_empty_header_name(tmp_path):
    result = scan_file(write(tmp_path, "data.csv", b"text,,label\na,1,x\n"))
    assert len(result.errors) == 1
    assert result.errors[0].line == 1
    assert "Column 2" in result.errors[0].message and "no name" in result.errors[0].message


def test_quoted_multiline_fields_keep_line_numbers(tmp_path):
    content = (b'text,label\n'
               b'"first line\nsecond line\nthird line",pos\n'  # lines 2-4
               b'plain,\n'  # line 5: missing label
               b'"one, ""two""\nthree",neg\n'  # lines 6-7
               b'too,many,fields\n'  # line 8
               b'last,pos\n')  # line 9
    path = write(tmp_path, "data.csv", content)
    result = scan_file(path)
    assert error_lines(result) == [8]
    assert result.rows == 4
    assert result.stats["label"].null_lines == [5]
    assert result.stats["label"].nulls == 1
    assert list(iter_records(path, "csv")) == [
        {"text": "first line\nsecond line\nthird line", "label": "pos"},
        {"text": "plain", "label": None},
        {"text": 'one, "two"\nthree', "label": "neg"},
        {"text": "last", "label": "pos"},
    ]


def test_missing_values_counted_with_their_lines(tmp_path):
    csv_path = write(tmp_path, "data.csv", b"text,label\na,x\n,y\nc,\nd,  \ne,x\n")
    stats = scan_file(csv_path).stats
    assert (stats["text"].nulls, stats["text"].null_lines) == (1, [3])
    assert (stats["label"].nulls, stats["label"].null_lines) == (2, [4, 5])
    assert stats["label"].non_null == 3

    jsonl = (b'{"text": "a"}\n'
             b'{"text": "b", "label": null}\n'
             b'{"text": null, "label": "x"}\n'
             b'{"label": "y"}\n')
    stats = scan_file(write(tmp_path, "data.jsonl", jsonl)).stats
    # A key that first appears on a later line was missing on the earlier ones: those lines count too.
    assert (stats["label"].nulls, stats["label"].null_lines) == (2, [1, 2])
    assert (stats["text"].nulls, stats["text"].null_lines) == (2, [3, 4])

    parquet = write_parquet(tmp_path, "data.parquet", {"text": ["a", None, "c"], "label": [1.0, 2.0, None]})
    stats = scan_file(parquet).stats
    assert stats["text"].null_lines == [2] and stats["label"].null_lines == [3]


# Profile facts ------------------------------------------------------------------------------------------------

def test_profile_facts(tmp_path):
    content = (b"text,label,score,count\n"
               b"abcd,pos,0.5,1\n"
               b"ab,neg,1.25,2\n"
               b"abcdef,pos,2,3\n")
    result = scan_file(write(tmp_path, "data.csv", content))
    profile = result.profile()
    assert profile["label"]["distinct"] == {"pos": 2, "neg": 1}
    assert profile["label"]["kinds"] == {"str": 3}
    assert profile["text"]["text_chars_mean"] == 4
    assert profile["text"]["text_chars_max"] == 6
    assert profile["score"]["kinds"] == {"float": 2, "int": 1}
    assert profile["score"]["all_integer"] is False
    assert (profile["score"]["min"], profile["score"]["max"], profile["score"]["sum"]) == (0.5, 2.0, 3.75)
    assert profile["count"]["kinds"] == {"int": 3}
    assert profile["count"]["all_integer"] is True
    assert profile["count"]["distinct"] == {"1": 1, "2": 1, "3": 1}
    assert profile["score"]["kind_lines"] == {"float": 2, "int": 4}
    # The profile is stored as JSON.
    assert json.loads(json.dumps(profile)) == profile


def test_profile_of_jsonl_values(tmp_path):
    content = (b'{"text": "a", "label": 1.0, "tags": ["x", "y"], "flag": true}\n'
               b'{"text": "bb", "label": 2, "tags": ["y"], "flag": false}\n')
    profile = scan_file(write(tmp_path, "data.jsonl", content)).profile()
    assert profile["label"]["kinds"] == {"float": 1, "int": 1}
    assert profile["label"]["all_integer"] is True  # 1.0 is a whole number
    assert profile["tags"]["kinds"] == {"list": 2}
    assert profile["tags"]["list_len_max"] == 2
    assert profile["tags"]["item_distinct"] == {"x": 1, "y": 2}
    assert profile["flag"]["kinds"] == {"bool": 2}
    assert profile["text"]["text_chars_mean"] == 1.5


def test_csv_cells_typed(tmp_path):
    content = b"text,value\na,42\nb,-7\nc,3.5\nd,1e3\ne,nan\nf,1_000\ng,007\nh, 12 \n"
    path = write(tmp_path, "data.csv", content)
    assert [r["value"] for r in iter_records(path, "csv")] == [42, -7, 3.5, 1000.0, "nan", "1_000", 7, 12]


def test_iter_records_yields_what_the_scan_saw(tmp_path):
    content = b"text,label,score\nhello,1,0.5\n\"multi\nline\",2,\nbye,1,3\n"
    path = write(tmp_path, "data.csv", content)
    result = scan_file(path)
    records = list(iter_records(path, "csv"))
    assert records == [{"text": "hello", "label": 1, "score": 0.5},
                       {"text": "multi\nline", "label": 2, "score": None},
                       {"text": "bye", "label": 1, "score": 3}]
    assert len(records) == result.rows
    assert result.profile()["label"]["distinct"] == {"1": 2, "2": 1}
    assert result.profile()["score"]["kinds"] == {"float": 1, "int": 1}

    parquet = write_parquet(tmp_path, "data.parquet", {"text": ["a", "b"], "label": [1, 2], "score": [0.5, None]})
    assert list(iter_records(parquet, "parquet")) == [{"text": "a", "label": 1, "score": 0.5},
                                                      {"text": "b", "label": 2, "score": None}]
    assert scan_file(parquet).profile()["label"]["kinds"] == {"int": 2}


def test_iter_records_skips_rows_with_errors(tmp_path):
    path = write(tmp_path, "data.jsonl", b'{"text": "a"}\nnot json\n[1]\n{"text": "b"}\n')
    assert list(iter_records(path, "jsonl")) == [{"text": "a"}, {"text": "b"}]
    path = write(tmp_path, "data.csv", b"text,label\na,x\nb,y,z\nc,w\n")
    assert list(iter_records(path, "csv")) == [{"text": "a", "label": "x"}, {"text": "c", "label": "w"}]


def test_parquet_nan_is_an_error_with_row_and_column(tmp_path):
    path = write_parquet(tmp_path, "data.parquet", {"text": ["a", "b", "c"], "score": [0.5, float("nan"), 1.5]})
    result = scan_file(path)
    assert [(e.line, e.column) for e in result.errors] == [(2, "score")]
    assert result.profile()["score"]["sum"] == 2.0


def test_problems_are_capped_but_counted(tmp_path):
    content = b"text,label\n" + b"a,b,c\n" * 150
    result = scan_file(write(tmp_path, "data.csv", content))
    assert len(result.errors) == 100 and result.error_count == 150
    assert result.validation()["errors_not_listed"] == 50
