"""The scan's fast path (app/data/fast: Arrow, a block at a time) against its exact path (row by row):
the same report — rows, columns, every profile figure in the same order, errors and warnings with line
and column, detected task — on every malformed file the suite already has (tests/test_scan.py,
tests/test_scan_limits.py, tests/test_files_api.py, tests/security), on well-formed files of every task,
on the cases where the two readers could part (quoted line breaks, BOM, empty cells, numbers written
every way) and on random files. Where the exact path finds an error, the fast path must have handed the
file over rather than report it itself."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.data.fast import fast_scan
from app.data.fast import delimited as fast_delimited
from app.data.fast import jsonl as fast_jsonl
from app.data.limits import ScanLimits
from app.data.profile import ScanResult
from app.data.scan import iter_numbered_records, scan_file, sniff_format
from app.ml.tasks import detect_task
from tests.support import task_data

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ScanLimits(max_row_bytes=200, max_cell_bytes=64, max_nesting_depth=4, max_columns=5)
ROWS_JSON = json.dumps([{"text": "great film", "label": "pos"}, {"text": "awful film", "label": "neg"}]).encode()


@dataclass
class Case:
    id: str
    name: str
    content: bytes
    limits: ScanLimits = field(default_factory=ScanLimits)


def _nested(levels: int) -> str:
    return '{"a": ' + "[" * (levels - 1) + "1" + "]" * (levels - 1) + "}"


def _hostile_jsonl() -> bytes:  # tests/test_scan_limits.py::test_memory_of_hostile_jsonl_stays_bounded, smaller
    braces = b'{"text": "t", "x": [' + b",".join([b"{}"] * 340_000) + b"]}\n"
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    return b'{"text": "' + b"x" * (3 * 2**20) + b'"}\n' + braces * 2 + deep


MALFORMED = [
    # tests/test_scan.py
    Case("empty", "data.csv", b""),
    Case("blank-lines-only", "data.csv", b"\n\n  \n"),
    Case("bom-only", "data.csv", b"\xef\xbb\xbf"),
    Case("json-array", "data.json", ROWS_JSON),
    Case("latin-1", "data.csv", b"text,label\ngood,pos\ncaf\xe9 latin-1,neg\nok,pos\n"),
    Case("ragged", "data.csv", b"text,label\ngood,pos\nhello, world,neg\nok,pos\n"),
    Case("unclosed-quote", "data.csv", b'text,label\ngood,pos\n"never closed,neg\nok,pos\nfine,neg\n'),
    Case("invalid-json", "data.jsonl", b'{"text": "a", "label": "x"}\n\n{"text": "b", "label": }\n'
                                       b'{"text": "c", "label": "y"}\n'),
    Case("not-an-object", "data.jsonl", b'{"text": "a", "label": "x"}\n["b", "y"]\n"c"\n{"text": "d", "label": "y"}\n'),
    Case("nan-infinity", "data.jsonl", b'{"text": "a", "label": 1.5}\n{"text": "b", "label": NaN}\n'
                                       b'{"text": "c", "label": 1e999}\n'),
    Case("header-only-csv", "data.csv", b"text,label\n"),
    Case("header-only-tsv", "data.tsv", b"text\tlabel\n\n"),
    Case("duplicate-header", "data.csv", b"text,label,text\na,x,b\n"),
    Case("unnamed-column", "data.csv", b"text,,label\na,1,x\n"),
    Case("multiline-then-ragged", "data.csv", b'text,label\n"first line\nsecond line\nthird line",pos\nplain,\n'
                                              b'"one, ""two""\nthree",neg\ntoo,many,fields\nlast,pos\n'),
    Case("rows-with-errors-jsonl", "data.jsonl", b'{"text": "a"}\nnot json\n[1]\n{"text": "b"}\n'),
    Case("rows-with-errors-csv", "data.csv", b"text,label\na,x\nb,y,z\nc,w\n"),
    Case("errors-capped", "data.csv", b"text,label\n" + b"a,b,c\n" * 150),
    # tests/test_scan_limits.py
    Case("long-line-csv", "data.csv", b"text,label\na,x\n" + b"x" * 300 + b",y\nc,z\n", TINY),
    Case("long-line-jsonl", "data.jsonl", b'{"text": "a", "label": "x"}\n{"text": "' + b"x" * 300 +
         b'", "label": "y"}\n{"text": "c", "label": "z"}\n', TINY),
    Case("line-of-megabytes", "data.jsonl", b'{"text": "' + b"x" * (3 * 2**20) + b'"}\n{"text": "after"}\n'),
    Case("csv-cell-too-big", "data.csv", b"text,label\nshort,a\n" + b"y" * 100 + b",b\nok,c\n", TINY),
    Case("csv-record-runs-on", "data.csv", b'text,label\nok,a\n"never closed,b\n' + b"more words,c\n" * 40, TINY),
    Case("jsonl-value-too-big", "data.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "tags": [' +
         b", ".join([b'"tag"'] * 20) + b']}\n', TINY),
    Case("jsonl-too-deep", "data.jsonl", f'{_nested(4)}\n{_nested(5)}\n{{"a": "[[[[[[[[[[ nests nothing"}}\n'.encode(),
         TINY),
    Case("jsonl-100k-deep", "data.jsonl", b'{"text": "ok"}\n{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
         b'{"a":' + b"[" * 100_000 + b"\n" b'{"a":' + b'[{"b":' * 50_000 + b"\n"),
    Case("jsonl-5000-digits", "data.jsonl", b'{"n": 1}\n{"n": ' + b"9" * 5000 + b"}\n"),
    Case("too-many-columns-csv", "data.csv", b"c0,c1,c2,c3,c4,c5,c6,c7\n" + b"1," * 7 + b"1\n", TINY),
    Case("too-many-columns-jsonl", "data.jsonl", "\n".join(json.dumps({f"k{i}": 1 for i in range(n)})
                                                          for n in (3, 5, 6)).encode() + b"\n", TINY),
    Case("nul-csv", "data.csv", b"text,label\nfine,a\nbad\x00text,b\nok,c\n"),
    Case("nul-jsonl", "data.jsonl", b'{"text": "fine", "meta": {"tags": ["a", "b"]}}\n'
                                    b'{"text": "fine", "meta": {"tags": ["a", "b\\u0000c"]}}\n'
                                    b'{"te\\u0000xt": "key with a NUL"}\n'
                                    b'{"text": "a backslash then u0000 is text: \\\\u0000"}\n'),
    Case("unpaired-surrogate", "data.jsonl", b'{"text": "emoji \\ud83d\\ude00 is fine"}\n'
                                             b'{"text": "ok", "tags": ["\\ud800"]}\n'),
    Case("hostile-jsonl", "hostile.jsonl", _hostile_jsonl()),
    # tests/test_files_api.py and tests/security
    Case("broken-jsonl", "broken.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": \n'),
    Case("nul-upload", "nul.csv", b"text,label\ngood,pos\nbad\x00,neg\n"),
    Case("binary-csv", "bin.csv", b"text,label\n\xff\xfe\x00,\xe9\r\n"),
    Case("nul-security", "nul.csv", b"text,label\nfine,1\nbad\x00text,0\n"),
    Case("nested-upload", "nested.jsonl", b'{"text": "fine", "label": "a"}\n' + b'{"text": "t", "x": [' +
         b",".join([b"{}"] * 340_000) + b"]}\n" + b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"),
]

CSV = b"text,label\ngreat film,pos\nawful film,neg\nfine film,pos\n"
JSONL = b'{"text": "great film", "label": "pos"}\n{"text": "awful film", "label": "neg"}\n' \
        b'{"text": "fine film", "label": "pos"}\n'

WELL_FORMED = [
    *(Case(f"example-{p.stem}", p.name, p.read_bytes()) for p in sorted(EXAMPLES.iterdir())),
    *(Case(f"task-{name}", f"{name}.jsonl", task_data.jsonl(getattr(task_data, name)(300)))
      for name in ("question_answering", "summarization", "prompt_completion", "chat", "preference", "multi_label",
                   "scores", "sentiment", "ner")),
    Case("csv", "data.csv", CSV),
    Case("tsv", "data.tsv", CSV.replace(b",", b"\t")),
    Case("jsonl", "data.jsonl", JSONL),
    Case("bom-csv", "bom.csv", b"\xef\xbb\xbf" + CSV),
    Case("bom-tsv", "bom.tsv", b"\xef\xbb\xbf" + CSV.replace(b",", b"\t")),
    Case("bom-jsonl", "bom.jsonl", b"\xef\xbb\xbf" + JSONL),
    Case("crlf", "data.csv", CSV.replace(b"\n", b"\r\n")),
    Case("no-final-line-break", "data.csv", CSV.rstrip(b"\n")),
    Case("trailing-empty-lines", "data.csv", CSV + b"\n\r\n\n"),
    Case("tsv-quote-start", "data.tsv", b'text\tlabel\n"quoted start of a sentence\tpos\nnext line\tneg\n'
                                        b'3" tall\tpos\n'),
    Case("quoted-line-breaks", "data.csv", b'text,label\n"first line\nsecond line\nthird line",pos\nplain,\n'
                                           b'"one, ""two""\nthree",neg\nlast,pos\n'),
    Case("quoted-crlf", "data.csv", b'text,label\r\n"a\r\nb",x\r\n,y\r\n'),
    Case("quoted-header", "data.csv", b'"te""xt"," label "\na,b\n'),
    Case("missing-values", "data.csv", b"text,label\na,x\n,y\nc,\nd,  \ne,x\n"),
    Case("missing-keys", "data.jsonl", b'{"text": "a"}\n{"text": "b", "label": null}\n{"text": null, "label": "x"}\n'
                                       b'{"label": "y"}\n'),
    Case("profile-facts", "data.csv", b"text,label,score,count\nabcd,pos,0.5,1\nab,neg,1.25,2\nabcdef,pos,2,3\n"),
    Case("jsonl-values", "data.jsonl", b'{"text": "a", "label": 1.0, "tags": ["x", "y"], "flag": true}\n'
                                       b'{"text": "bb", "label": 2, "tags": ["y"], "flag": false}\n'),
    Case("numbers-every-way", "data.csv", ("text,value\n" + "".join(
        f"r{i},{v}\n" for i, v in enumerate(["42", "-7", "3.5", "1e3", "nan", "1_000", "007", " 12 ", "+5", ".5", "5.",
                                             "-0", "-0.0", "1E5", "1e999", "1e-999", "0x1F", "١٢", "1.2.3", "e5",
                                             "inf", "\u00a012\u00a0", "\u3000", "7" * 400, "12345678901234567890",
                                             "-.5e-3", "1.7976931348623157e308"]))).encode()),
    Case("numeric-looking-labels", "data.csv", b"text,label\na,1\nb,2\nc,1\nd, 2\ne,01\nf,2.0\n"),
    Case("float-label", "scores.csv", b"sentence,score\nok,0.5\ngood,3.25\nbad,-1.0\n"),
    Case("odd", "odd.csv", b"a,b\n1,2\n3,4\n"),
    Case("long-values", "data.csv", b"text,label\n" + b"".join(b"%s,%s\n" % (b"t" * 300, lab)
                                                              for lab in (b"pos", b"neg", b"pos"))),
    Case("long-items", "data.jsonl", b'{"tags": ["B-PER", "O"]}\n{"tags": ["' + b"o" * 300 + b'"]}\n'),
    Case("400-digit-id", "data.csv", b"id,label\n" + b"7" * 400 + b",a\n"),
    Case("multiline-within-limit", "data.csv", b'text,label\n"one\ntwo\nthree",a\n', TINY),
    Case("iso-dates", "data.jsonl", b'{"text": "a", "day": "2020-01-01", "at": ["2020-01-01T10:00:00"]}\n'
                                    b'{"text": "b", "day": "2021-02-03", "at": []}\n'),
    Case("escapes", "data.jsonl", b'{"text": "caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\\\ \\/", "label": "x"}\n'
                                  b'{"text": "\\t tab", "label": "y"}\n'),
    Case("whole-floats", "data.jsonl", b'{"text": "a", "score": 5.0}\n{"text": "b", "score": 3}\n'
                                       b'{"text": "c", "score": -0}\n{"text": "d", "score": 2.5}\n'
                                       b'{"text": "e", "score": 1e2}\n{"te\\u0078t": "f", "score": 4}\n'
                                       b'{"text": "g", "x": {"score": 1}, "score": 1.0}\n'),
    Case("lists-of-everything", "data.jsonl", b'{"a": [1, null, 2], "b": [true], "c": [[1], []], '
                                              b'"d": [{"k": 1}, null]}\n'
                                              b'{"a": [], "b": [false, null], "c": null, "d": [{}]}\n'),
    Case("blank-and-indented-lines", "data.jsonl", b'{"text": "a"}\n\n   \n  {"text": "b"}\n\t{"text": "c"}\r\n'),
    Case("keys-in-order", "data.jsonl", b'{"b": 1, "a": 2}\n{"a": 3, "c": 4}\n'),
    Case("unicode-text", "data.csv", "text,label\nnaïve café,é\n日本語のテキスト,ラベル\n".encode()),
]


# Well-formed files the fast path leaves to the exact path: rarer shapes it does not reproduce.
HANDED_OVER = [
    Case("line-break-in-a-header-name", "data.csv", b'"te\nxt",label\na,b\n'),
    Case("empty-cell-one-column", "data.csv", b"text\na\n\nb\n"),
    Case("unclosed-quote-at-the-end", "data.csv", b'text,label\na,"b\n'),
    Case("whole-floats-in-a-list", "data.jsonl", b'{"scores": [1.0, 2.5]}\n{"scores": [3]}\n'),
    Case("kind-changes", "data.jsonl", b'{"text": "a"}\n{"text": 1}\n'),
    # A thousand keys, each on one row of five thousand: Arrow would hold five million values for them.
    Case("sparse-keys", "data.jsonl",
         ("".join(f'{{"k{i}": 1}}\n' for i in range(1000)) + '{"k0": 2}\n' * 4000).encode()),
]


def _summary(result: ScanResult) -> dict:
    profile = result.profile()
    return {"format": result.format, "rows": result.rows, "columns": result.columns,
            "profile": json.dumps(profile), "validation": result.validation(), "error_count": result.error_count,
            "task": detect_task(profile) if result.format and not result.errors else None}


def _compare(tmp_path: Path, case: Case) -> tuple[ScanResult, ScanResult | None]:
    path = tmp_path / case.name
    path.write_bytes(case.content)
    exact = scan_file(path, case.name, case.limits, exact=True)
    fast = None
    if exact.format in ("csv", "tsv", "jsonl"):
        fast = fast_scan(path, exact.format, case.limits)
    assert _summary(scan_file(path, case.name, case.limits)) == _summary(exact)
    if fast is not None:
        assert _summary(fast) == _summary(exact)
    return exact, fast


@pytest.mark.parametrize("case", MALFORMED, ids=[c.id for c in MALFORMED])
def test_malformed_files_are_reported_as_the_exact_path_reports_them(tmp_path, case):
    exact, fast = _compare(tmp_path, case)
    assert exact.errors, "a malformed case the exact path accepts"
    assert fast is None  # handed over: only the exact path names lines and columns


@pytest.mark.parametrize("case", WELL_FORMED, ids=[c.id for c in WELL_FORMED])
def test_well_formed_files_get_the_same_report_from_the_fast_path(tmp_path, case):
    exact, fast = _compare(tmp_path, case)
    assert not exact.errors
    assert fast is not None, "the fast path handed a well-formed file over"


@pytest.mark.parametrize("case", HANDED_OVER, ids=[c.id for c in HANDED_OVER])
def test_rarer_well_formed_files_are_left_to_the_exact_path(tmp_path, case):
    exact, fast = _compare(tmp_path, case)
    assert not exact.errors and fast is None


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few kilobytes, so that small files span many (records and label sets across them)."""
    monkeypatch.setattr(fast_delimited, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(fast_jsonl, "BLOCK_BYTES", 4096)


def test_files_of_many_blocks(tmp_path, small_blocks):
    rng = random.Random(3)
    rows = [(f'"line {i}\nwith a break, and a comma"' if i % 17 == 0 else f"text {i}",
             rng.choice(["pos", "neg", "1", "2.5", " ", "", str(i)]) if i < 1500 else "pos") for i in range(3000)]
    csv = "text,label\n" + "".join(f"{t},{v}\n" for t, v in rows)
    jsonl = "".join(json.dumps({"text": f"row {i}", **({"late": i % 3} if i > 2000 else {}),
                                "score": [1.5, 2, 3.0][i % 3] if i % 5 else None}) + "\n" for i in range(3000))
    for case in (Case("csv", "many.csv", csv.encode()), Case("jsonl", "many.jsonl", jsonl.encode())):
        exact, fast = _compare(tmp_path, case)
        assert fast is not None and exact.rows == 3000


def test_label_sets_dropped_past_a_thousand_values_or_long_values(tmp_path, small_blocks):
    csv = "text,label,code\n" + "".join(f"t,{i},{'x' * (300 if i == 1800 else 3)}{i % 50}\n" for i in range(2000))
    exact, fast = _compare(tmp_path, Case("drop", "drop.csv", csv.encode()))
    assert fast is not None and exact.stats["label"].distinct is None and exact.stats["code"].distinct is None
    assert exact.stats["text"].distinct == {"t": 2000}


def test_label_memory_budget_is_left_to_the_exact_path(tmp_path):
    # 90 columns of 1000 distinct 250-character values: together past the shared budget, where the order
    # in which values come decides which column stops being a label candidate.
    header = ",".join(f"c{i}" for i in range(90))
    rows = "".join(",".join(f"{'v' * 250}{r}" for _ in range(90)) + "\n" for r in range(1000))
    exact, fast = _compare(tmp_path, Case("budget", "budget.csv", f"{header}\n{rows}".encode()))
    assert fast is None and sum(s.distinct is None for s in exact.stats.values()) > 0


def test_python_whitespace_is_what_str_strip_strips():
    assert set(fast_delimited.PY_WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}


# Random files: the two readers compared where they could part ------------------------------------------------

_CELLS = ["", " ", "x", "a b", "1", "-0", "+5", "1e3", "1.5", "007", "nan", "1_000", "é", "\u00a0", " 12 ", "9" * 25,
          '"q,uo""te"', '"multi\nline"', '"x"y', 'x"y', '""', '"', "\t", "\r", ",", "1.0", "-.5", "true"]


def _random_csv(rng: random.Random) -> bytes:
    columns = rng.choice([1, 2, 3])
    lines = [",".join(f"c{i}" for i in range(columns))]
    for _ in range(rng.randint(1, 12)):
        width = columns if rng.random() < 0.9 else rng.choice([1, columns + 1])
        lines.append(",".join(rng.choice(_CELLS) for _ in range(width)))
        if rng.random() < 0.05:
            lines.append("")
    ending = rng.choice(["\n", "\r\n"])
    return (ending.join(lines) + rng.choice([ending, "", ending * 2])).encode()


def _random_value(rng: random.Random, kind: str, depth: int = 0):
    if rng.random() < 0.1:
        return None
    if kind == "str":
        return rng.choice(["a", "", "2020-01-01", "é", "x y", "1", "null", "\u00a0", "😀", "\\u0041"])
    if kind == "int":
        return rng.choice([0, 1, -3, 7, 10**15])
    if kind == "float":
        return rng.choice([0.5, 2.0, -1.25, 1e20, 3.0, 0.1])
    if kind == "number":  # ints and floats in one column, as json.dumps writes them
        return rng.choice([0.5, 2.0, -1.25, 3, 0, 7])
    if kind == "bool":
        return rng.choice([True, False])
    if kind.startswith("list:"):
        return [_random_value(rng, kind[5:], depth + 1) for _ in range(rng.randint(0, 3))]
    return {"k": _random_value(rng, "str", depth + 1), "n": [1, 2]}


def _random_jsonl(rng: random.Random) -> bytes:
    """Each key holds one kind of value (as real datasets do), now and then another."""
    kinds = ["str", "int", "float", "number", "bool", "list:str", "list:int", "list:bool", "dict"]
    plan = {key: rng.choice(kinds) for key in ("text", "label", "score", "tags")}
    lines = []
    for _ in range(rng.randint(1, 10)):
        keys = rng.sample(list(plan), rng.randint(1, len(plan)))
        record = {k: _random_value(rng, plan[k] if rng.random() < 0.97 else rng.choice(kinds)) for k in keys}
        line = json.dumps(record, ensure_ascii=rng.random() < 0.5)
        if rng.random() < 0.05:
            line = rng.choice(["", "  ", line[:-1], "[1]", line + line, line.replace("2.0", "2"), " " + line])
        lines.append(line)
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("seed", range(8))
def test_random_files(tmp_path, seed):
    rng = random.Random(seed)
    well_formed = handled = 0
    for index in range(60):
        for name, content in (("r.csv", _random_csv(rng)), ("r.jsonl", _random_jsonl(rng))):
            if content.lstrip().startswith(b"["):
                continue  # not JSON Lines at all
            exact, fast = _compare(tmp_path, Case(f"{seed}-{index}", name, content))
            if exact.errors:
                assert fast is None, content
            else:
                well_formed += 1
                handled += fast is not None
    # An unclosed quote at the end, an empty cell in a one-column file, ints and floats in one list:
    # well-formed files the exact path reads; the others the fast path takes.
    assert handled >= well_formed // 2


# Training reads the rows the report describes ------------------------------------------------------------------

@pytest.mark.parametrize("case", [c for c in WELL_FORMED if c.id in (
    "quoted-line-breaks", "quoted-crlf", "bom-csv", "bom-jsonl", "missing-values", "numbers-every-way",
    "numeric-looking-labels", "whole-floats", "trailing-empty-lines", "tsv-quote-start")], ids=lambda c: c.id)
def test_the_rows_training_reads_are_the_rows_the_fast_report_describes(tmp_path, case):
    """The worker reads rows through scan.iter_numbered_records (worker/preparation.py): folded into a
    report, they give the fast path's report, so what was validated is what is trained on."""
    path = tmp_path / case.name
    path.write_bytes(case.content)
    fmt = sniff_format(case.content[:4096], case.name)
    fast = fast_scan(path, fmt, case.limits)
    assert fast is not None
    read = ScanResult(format=fmt, limits=case.limits)
    records = list(iter_numbered_records(path, fmt, case.limits))
    read.columns = fast.columns
    read.stats = {name: read.new_stats() for name in fast.columns}
    for line, record in records:
        read.add_row(record, line)
    assert len(records) == fast.rows
    assert json.dumps(read.profile()) == json.dumps(fast.profile())


def test_tricky_values_read_by_training(tmp_path):
    path = tmp_path / "tricky.csv"
    path.write_bytes(b'\xef\xbb\xbftext,label\r\n"two\r\nlines",007\r\n,1.0\r\n" padded ", 2 \r\n')
    assert [r for _, r in iter_numbered_records(path, "csv")] == [
        {"text": "two\r\nlines", "label": 7}, {"text": None, "label": 1.0}, {"text": " padded ", "label": 2}]
    report = scan_file(path)
    assert report.profile()["label"]["distinct"] == {"7": 1, "1.0": 1, "2": 1}
    assert report.stats["text"].null_lines == [4] and report.stats["label"].kind_lines == {"int": 2, "float": 4}
