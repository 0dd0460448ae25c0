"""Finding 3: scanning an upload expanded compressed data without bound — a 1 KB Parquet file of
dictionary-encoded strings took the API from 547 MB to 1,759 MB; a 21 MB JSONL of nested {} added 575 MB;
deeply nested JSON answered 500. The same files, uploaded to the live API: reported line by line, the
API process's memory growing by less than 200 MB."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from tests.security.conftest import MB

BOUND = 200 * MB


def _upload(client, name: str, content: bytes) -> dict:
    response = client.post("/v1/files", files={"file": (name, content)}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return response.json()


def _dictionary_bomb(value_bytes: int, rows: int) -> bytes:
    """One long text in the dictionary, referenced by every row: kilobytes that decode to gigabytes."""
    column = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["z" * value_bytes]))
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": column, "label": ["a"] * rows}), buffer, compression="zstd")
    return buffer.getvalue()


def test_a_parquet_dictionary_bomb_is_refused_without_decoding_it(pg_stack, tenants):
    bomb = _dictionary_bomb(600_000, 100_000)  # 60 GB of text once decoded
    assert len(bomb) < 10_000
    before = pg_stack.api_rss()
    with pg_stack.client(tenants.a) as c:
        record = _upload(c, "bomb.parquet", bomb)
    assert pg_stack.api_rss() - before < BOUND
    assert record["status"] == "error" and record["rows"] == 0
    assert record["validation"]["errors"][0]["column"] == "text", record["validation"]


def test_megabytes_of_nested_json_lines_are_refused_line_by_line(pg_stack, tenants):
    braces = b'{"text": "t", "x": [' + b",".join([b"{}"] * 340_000) + b"]}\n"  # 1 MB of {} a line
    content = b'{"text": "fine", "label": "a"}\n' + braces * 21 + b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    assert len(content) > 20 * MB
    before = pg_stack.api_rss()
    with pg_stack.client(tenants.a) as c:
        record = _upload(c, "nested.jsonl", content)
    assert pg_stack.api_rss() - before < BOUND
    lines = [e["line"] for e in record["validation"]["errors"]]
    assert record["status"] == "error" and lines == list(range(2, 24)), lines
    assert "deep" in record["validation"]["errors"][-1]["message"].lower() or \
        "nest" in record["validation"]["errors"][-1]["message"].lower()
