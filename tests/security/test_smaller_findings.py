"""Finding 11, the smaller ones: a 500 on racing Idempotency-Keys; checkpoints of a deleted model still
servable and downloadable; downloads built as whole tarballs in a temporary folder; 500s on a bad
top_k and on mixed text_pair inputs; world-readable database, uploads and key file; jinja2 without a
lower bound; NUL bytes in CSV cells accepted."""

from __future__ import annotations

import io
import stat
import tarfile
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import requires

import pytest

from tests.security.conftest import upload_example

JOBS = "/v1/fine_tuning/jobs"


@pytest.fixture(scope="module")
def classifier(pg_stack, tenants) -> dict:
    """A text classifier of project B, with checkpoints."""
    with pg_stack.client(tenants.b) as c:
        job = c.post(JOBS, json={"model": "tiny/bert", "training_file": upload_example(c), "suffix": "secret",
                                 "hyperparameters": {"n_epochs": 1, "batch_size": 8, "checkpoint_every": 5}}).json()
    done = pg_stack.wait_for_job(job["id"], timeout=240, key=tenants.b)
    assert done["status"] == "succeeded", done
    return done


def test_racing_creates_with_one_idempotency_key_get_one_job(pg_stack, tenants):
    with pg_stack.client(tenants.a) as c:
        file_id = upload_example(c)
        body = {"model": "tiny/bert", "training_file": file_id}
        for round_ in range(4):
            headers = {"Idempotency-Key": f"race-{round_}-{file_id}"}
            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(lambda _: c.post(JOBS, json=body, headers=headers), range(2)))
            assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
            assert answers[0].json()["id"] == answers[1].json()["id"]
            c.post(f"{JOBS}/{answers[0].json()['id']}/cancel")


def test_a_download_streams_the_archive(pg_stack, tenants, classifier):
    with pg_stack.client(tenants.b) as c:
        response = c.get(f"/v1/models/{classifier['fine_tuned_model']}/download")
    assert response.status_code == 200
    assert "content-length" not in response.headers  # compressed as it is sent, never staged whole
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        names = set(archive.getnames())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]


def test_bad_prediction_parameters_answer_400(pg_stack, tenants, classifier):
    path = f"/v1/models/{classifier['fine_tuned_model']}/predict"
    with pg_stack.client(tenants.b) as c:
        bad = c.post(path, json={"inputs": "a great film", "parameters": {"top_k": "x"}})
        assert bad.status_code == 400 and "top_k" in bad.json()["error"]["param"]
        mixed = c.post(path, json={"inputs": ["a great film", {"text": "bad plot", "text_pair": "dull"}]})
        assert mixed.status_code in (200, 400), mixed.text


def test_deleting_a_model_deletes_its_checkpoints(pg_stack, tenants, classifier):
    with pg_stack.client(tenants.b) as c:
        checkpoints = c.get(f"{JOBS}/{classifier['id']}/checkpoints").json()["data"]
        assert checkpoints
        served = checkpoints[0]["fine_tuned_model_checkpoint"]
        assert c.post(f"/v1/models/{served}/predict", json={"inputs": "hi"}).status_code == 200
        assert c.delete(f"/v1/models/{classifier['fine_tuned_model']}").status_code == 200
        assert c.post(f"/v1/models/{served}/predict", json={"inputs": "hi"}).status_code == 404
        assert c.get(f"/v1/models/{served}/download").status_code == 404
        assert c.get(f"{JOBS}/{classifier['id']}/checkpoints").json()["data"] == []


def test_nul_bytes_in_csv_cells_are_refused(pg_stack, tenants):
    with pg_stack.client(tenants.a) as c:
        record = c.post("/v1/files", files={"file": ("nul.csv", b"text,label\nfine,1\nbad\x00text,0\n")}).json()
    assert record["status"] == "error"
    problem = record["validation"]["errors"][0]
    assert problem["line"] == 3 and problem["column"] == "text", problem


def test_the_data_folder_is_private_to_the_service_user(quiet_stack):
    with quiet_stack.client() as c:
        upload_example(c)
    data = quiet_stack.root / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    written = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.name == "finetune.sqlite" for p in written) and any("files" in p.parts for p in written)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is readable by other users"


def test_jinja2_is_required_at_a_version_without_known_sandbox_escapes():
    assert "jinja2>=3.1.6" in [r.replace(" ", "") for r in requires("finetune-service")]
