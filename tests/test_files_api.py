"""POST/GET/DELETE /v1/files through the HTTP API (in-process app, one fresh project per test)."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from tests.conftest import upload

CAP = 256 * 1024  # FT_MAX_UPLOAD_BYTES in tests

CSV = b"text,label\ngreat film,pos\nawful film,neg\nfine film,pos\nbad film,neg\n"
TSV = b"text\tlabel\ngreat film\tpos\nawful film\tneg\nfine film\tpos\nbad film\tneg\n"
JSONL = (b'{"text": "great film", "label": "pos"}\n{"text": "awful film", "label": "neg"}\n'
         b'{"text": "fine film", "label": "pos"}\n{"text": "bad film", "label": "neg"}\n')
ROWS = [{"text": "great film", "label": "pos"}, {"text": "awful film", "label": "neg"},
        {"text": "fine film", "label": "pos"}, {"text": "bad film", "label": "neg"}]


def parquet_bytes(columns: dict[str, list]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


PARQUET = parquet_bytes({"text": [r["text"] for r in ROWS], "label": [r["label"] for r in ROWS]})


def assert_error(response, status: int, param: str | None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] == param
    return error


def stored_files() -> set[Path]:
    from app.config import get_settings

    root = get_settings().resolved_storage_dir
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def uploaded(client, name: str, content: bytes) -> dict:
    response = upload(client, name, content)
    assert response.status_code == 200, response.text
    return response.json()


# Upload: the file object -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "content", "fmt"), [
    ("reviews.csv", CSV, "csv"),
    ("reviews.tsv", TSV, "tsv"),
    ("reviews.jsonl", JSONL, "jsonl"),
    ("reviews.parquet", PARQUET, "parquet"),
    ("reviews.jsonl", CSV, "csv"),  # the content decides, not the extension
    ("reviews.csv", PARQUET, "parquet"),
], ids=["csv", "tsv", "jsonl", "parquet", "csv-named-jsonl", "parquet-named-csv"])
def test_upload_each_format(client, name, content, fmt):
    before = int(time.time())
    f = uploaded(client, name, content)
    assert f["id"].startswith("file-")
    assert f["object"] == "file"
    assert f["bytes"] == len(content)
    assert before <= f["created_at"] <= int(time.time())
    assert f["filename"] == name
    assert f["purpose"] == "fine-tune"
    assert f["status"] == "processed"
    assert f["format"] == fmt
    assert f["rows"] == 4
    assert f["columns"] == ["text", "label"]
    assert f["sha256"] == hashlib.sha256(content).hexdigest()
    assert f["detected_task"] == "text-classification"
    assert f["detected_column_mapping"] == {"text": "text", "label": "label"}
    assert f["validation"]["errors"] == [] and f["validation"]["warnings"] == []


def test_float_label_is_text_regression(client):
    f = uploaded(client, "scores.csv", b"sentence,score\nok,0.5\ngood,3.25\nbad,-1.0\n")
    assert f["status"] == "processed"
    assert f["detected_task"] == "text-regression"
    assert f["detected_column_mapping"] == {"text": "sentence", "label": "score"}


def test_no_task_detected_is_a_warning(client):
    f = uploaded(client, "odd.csv", b"a,b\n1,2\n3,4\n")
    assert f["status"] == "processed"
    assert f["detected_task"] is None and f["detected_column_mapping"] is None
    assert f["validation"]["errors"] == []
    assert len(f["validation"]["warnings"]) == 1 and "task" in f["validation"]["warnings"][0]["message"]


@pytest.mark.parametrize(("name", "content", "line", "column", "words"), [
    ("ragged.csv", b"text,label\ngood,pos\nhello, world,neg\nok,neg\n", 3, None, "fields"),
    ("broken.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": \n', 3, None, "Invalid JSON"),
    ("latin1.csv", b"text,label\ngood,pos\ncaf\xe9,neg\n", 3, None, "UTF-8"),
    ("dupe.csv", b"text,label,text\na,x,b\n", 1, "text", "twice"),
    ("array.json", b'[{"text": "a", "label": "x"}]', 1, None, "JSON array"),
], ids=["ragged-csv", "invalid-json", "bad-encoding", "duplicate-header", "json-array"])
def test_broken_file_is_stored_with_status_error(client, name, content, line, column, words):
    # A file that cannot be trained on is still accepted (200) so that its report can be read;
    # status "error" and validation.errors say where and what, and no job can use it.
    response = upload(client, name, content)
    assert response.status_code == 200, response.text
    f = response.json()
    assert f["status"] == "error"
    assert f["detected_task"] is None
    errors = f["validation"]["errors"]
    assert errors, f
    assert errors[0]["line"] == line and errors[0]["column"] == column
    assert words in errors[0]["message"]
    assert f["status_details"] == errors[0]["message"]
    assert f["sha256"] == hashlib.sha256(content).hexdigest()
    assert client.get(f"/v1/files/{f['id']}").json()["validation"] == f["validation"]


def test_empty_file_is_status_error(client):
    f = uploaded(client, "empty.csv", b"")
    assert f["status"] == "error" and f["bytes"] == 0 and f["rows"] == 0
    assert "empty" in f["validation"]["errors"][0]["message"]


def test_missing_label_is_a_warning_with_line_and_column(client):
    f = uploaded(client, "gaps.csv", b"text,label\ngood,pos\nmeh,\nbad,neg\nok,pos\n")
    assert f["status"] == "processed"
    assert f["detected_task"] == "text-classification"
    assert f["validation"]["errors"] == []
    assert [(w["line"], w["column"]) for w in f["validation"]["warnings"]] == [(3, "label")]
    assert "Missing" in f["validation"]["warnings"][0]["message"]


def test_missing_label_in_jsonl_counts_lines_before_the_key_appears(client):
    f = uploaded(client, "gaps.jsonl", b'{"text": "a"}\n{"text": "b", "label": "x"}\n{"text": "c", "label": "y"}\n')
    assert f["detected_task"] == "text-classification"
    assert [(w["line"], w["column"]) for w in f["validation"]["warnings"]] == [(1, "label")]


def test_job_refuses_a_file_with_errors(client):
    f = uploaded(client, "ragged.csv", b"text,label\ngood,pos\nhello, world,neg\nok,neg\n")
    response = client.post("/v1/fine_tuning/jobs", json={"model": "tiny/bert", "training_file": f["id"]})
    assert_error(response, 400, "training_file")


# Upload: refusals ----------------------------------------------------------------------------------------------

def _multipart(content: bytes, boundary: str = "testboundary") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n"
            f"Content-Type: text/csv\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()


def _big_csv(size: int) -> bytes:
    header = b"text,label\n"
    row = b"x" * 60 + b",pos\n"
    return (header + row * (size // len(row) + 1))[:size]


# Just over the cap (past the middleware's multipart allowance, cut off while storing) and far over it.
@pytest.mark.parametrize("size", [CAP + 1, CAP + 200 * 1024], ids=["just-over", "far-over"])
def test_upload_over_the_cap_with_content_length(client, size):
    before = stored_files()
    response = upload(client, "big.csv", _big_csv(size))
    assert response.request.headers["content-length"]
    error = assert_error(response, 413, "file")
    assert str(CAP) in error["message"]
    assert client.get("/v1/files").json()["data"] == []
    assert stored_files() == before


@pytest.mark.parametrize("size", [CAP + 1, CAP + 200 * 1024], ids=["just-over", "far-over"])
def test_upload_over_the_cap_chunked(client, size):
    before = stored_files()
    body = _multipart(_big_csv(size))

    def chunks():
        for i in range(0, len(body), 16 * 1024):
            yield body[i:i + 16 * 1024]

    response = client.post("/v1/files", content=chunks(),
                           headers={"Content-Type": "multipart/form-data; boundary=testboundary"})
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "file")
    assert client.get("/v1/files").json()["data"] == []
    assert stored_files() == before


def test_upload_at_the_cap_is_accepted(client):
    content = _big_csv(CAP)
    f = uploaded(client, "exact.csv", content)
    assert f["bytes"] == CAP and f["sha256"] == hashlib.sha256(content).hexdigest()


def test_chunked_upload_under_the_cap_is_accepted(client):
    body = _multipart(CSV)
    response = client.post("/v1/files", content=iter([body[:50], body[50:]]),
                           headers={"Content-Type": "multipart/form-data; boundary=testboundary"})
    assert response.status_code == 200, response.text
    assert response.json()["sha256"] == hashlib.sha256(CSV).hexdigest()


def test_missing_file_field(client):
    assert_error(client.post("/v1/files", data={"purpose": "fine-tune"}), 400, "file")
    assert_error(client.post("/v1/files", files={"other": ("a.csv", CSV)}, data={"purpose": "fine-tune"}),
                 400, "file")
    assert_error(client.post("/v1/files", files={"file": (None, "just text")}, data={"purpose": "fine-tune"}),
                 400, "file")
    assert client.get("/v1/files").json()["data"] == []


def test_bad_purpose(client):
    before = stored_files()
    error = assert_error(upload(client, "a.csv", CSV, purpose="assistants"), 400, "purpose")
    assert "fine-tune" in error["message"]
    assert client.get("/v1/files").json()["data"] == []
    assert stored_files() == before


def test_api_key_required(app, client):
    f = uploaded(client, "a.csv", CSV)
    with TestClient(app) as anonymous:
        for method, path in (("GET", "/v1/files"), ("GET", f"/v1/files/{f['id']}"),
                             ("GET", f"/v1/files/{f['id']}/content"), ("DELETE", f"/v1/files/{f['id']}")):
            assert_error(anonymous.request(method, path), 401, None)
            assert_error(anonymous.request(method, path, headers={"Authorization": "Bearer sk-wrong"}), 401, None)
            assert_error(anonymous.request(method, path, headers={"Authorization": "Basic abc"}), 401, None)
        assert_error(anonymous.post("/v1/files", files={"file": ("a.csv", CSV)}, data={"purpose": "fine-tune"}),
                     401, None)
    assert client.get(f"/v1/files/{f['id']}").status_code == 200


# Reading -------------------------------------------------------------------------------------------------------

def test_list_pages_newest_first(client):
    ids = [uploaded(client, f"f{i}.csv", CSV)["id"] for i in range(5)]
    newest_first = ids[::-1]

    everything = client.get("/v1/files").json()
    assert everything["object"] == "list"
    assert [f["id"] for f in everything["data"]] == newest_first
    assert everything["has_more"] is False
    assert everything["first_id"] == newest_first[0] and everything["last_id"] == newest_first[-1]

    seen, after = [], None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = client.get("/v1/files", params=params).json()
        page_ids = [f["id"] for f in page["data"]]
        assert page["first_id"] == page_ids[0] and page["last_id"] == page_ids[-1]
        seen += page_ids
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == newest_first
    assert [len(p) for p in (seen[0:2], seen[2:4], seen[4:])] == [2, 2, 1]

    last = client.get("/v1/files", params={"after": newest_first[-1]}).json()
    assert last == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
    assert_error(client.get("/v1/files", params={"limit": 0}), 400, "limit")


def test_get_file(client):
    f = uploaded(client, "a.csv", CSV)
    response = client.get(f"/v1/files/{f['id']}")
    assert response.status_code == 200
    assert response.json() == f
    assert_error(client.get("/v1/files/file-doesnotexist"), 404, None)


@pytest.mark.parametrize(("name", "content"), [("a.csv", CSV), ("a.parquet", PARQUET),
                                                ("bin.csv", b"text,label\n\xff\xfe\x00,\xe9\r\n")],
                         ids=["csv", "parquet", "binary"])
def test_content_returns_the_exact_bytes(client, name, content):
    f = uploaded(client, name, content)
    response = client.get(f"/v1/files/{f['id']}/content")
    assert response.status_code == 200
    assert response.content == content


@pytest.mark.parametrize(("name", "content"), [("a.csv", CSV), ("a.tsv", TSV), ("a.jsonl", JSONL),
                                                ("a.parquet", PARQUET)], ids=["csv", "tsv", "jsonl", "parquet"])
def test_preview(client, name, content):
    f = uploaded(client, name, content)
    preview = client.get(f"/v1/files/{f['id']}/preview", params={"limit": 2}).json()
    assert preview["id"] == f["id"]
    assert preview["columns"] == ["text", "label"]
    assert preview["rows"] == ROWS[:2]
    assert client.get(f"/v1/files/{f['id']}/preview").json()["rows"] == ROWS  # fewer rows than the default
    assert_error(client.get(f"/v1/files/{f['id']}/preview", params={"limit": 0}), 400, "limit")


def test_preview_rows_are_typed(client):
    f = uploaded(client, "typed.csv", b"text,label,score\nhello,1,0.5\n\"two\nlines\",2,\nbye,1,-3\n")
    rows = client.get(f"/v1/files/{f['id']}/preview", params={"limit": 3}).json()["rows"]
    assert rows == [{"text": "hello", "label": 1, "score": 0.5},
                    {"text": "two\nlines", "label": 2, "score": None},
                    {"text": "bye", "label": 1, "score": -3}]


# Deleting, tenancy ---------------------------------------------------------------------------------------------

def test_delete(client):
    before = stored_files()
    f = uploaded(client, "a.csv", CSV)
    assert len(stored_files() - before) == 1
    response = client.delete(f"/v1/files/{f['id']}")
    assert response.status_code == 200
    assert response.json() == {"id": f["id"], "object": "file", "deleted": True}
    assert stored_files() == before
    for path in (f"/v1/files/{f['id']}", f"/v1/files/{f['id']}/content", f"/v1/files/{f['id']}/preview"):
        assert_error(client.get(path), 404, None)
    assert_error(client.delete(f"/v1/files/{f['id']}"), 404, None)
    assert client.get("/v1/files").json()["data"] == []


def test_another_projects_file_is_not_found(client, other_client):
    f = uploaded(client, "a.csv", CSV)
    for path in (f"/v1/files/{f['id']}", f"/v1/files/{f['id']}/content", f"/v1/files/{f['id']}/preview"):
        error = assert_error(other_client.get(path), 404, None)
        assert f["id"] in error["message"]
    assert_error(other_client.delete(f"/v1/files/{f['id']}"), 404, None)
    assert other_client.get("/v1/files").json()["data"] == []
    assert_error(other_client.get("/v1/files", params={"after": f["id"]}), 404, "after")
    assert client.get(f"/v1/files/{f['id']}").status_code == 200  # still there for its owner


def test_delete_refused_while_a_job_uses_the_file(client):
    f = uploaded(client, "a.csv", CSV)
    response = client.post("/v1/fine_tuning/jobs", json={"model": "tiny/bert", "training_file": f["id"]})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "queued"

    error = assert_error(client.delete(f"/v1/files/{f['id']}"), 409, "file_id")
    assert job["id"] in error["message"]
    assert client.get(f"/v1/files/{f['id']}").status_code == 200
    assert client.get(f"/v1/files/{f['id']}/content").content == CSV

    cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    response = client.delete(f"/v1/files/{f['id']}")
    assert response.status_code == 200
    assert response.json() == {"id": f["id"], "object": "file", "deleted": True}


def test_preview_clips_long_values(client):
    text = "word " * 1000  # 5,000 characters
    f = uploaded(client, "long.jsonl", json.dumps({"text": text, "tags": list(range(200))}).encode() + b"\n")
    row = client.get(f"/v1/files/{f['id']}/preview").json()["rows"][0]
    assert row["text"] == text[:2000] + "…"
    assert row["tags"] == list(range(50)) + ["…"]


def test_nul_character_in_an_upload_is_an_error_with_line_and_column(client):
    f = uploaded(client, "nul.csv", b"text,label\ngood,pos\nbad\x00,neg\n")
    assert f["status"] == "error"
    assert [(e["line"], e["column"]) for e in f["validation"]["errors"]] == [(3, "text")]
    assert "NUL" in f["validation"]["errors"][0]["message"]
