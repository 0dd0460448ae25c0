"""Finding 10: leaks. /metrics (no key) labelled counters with every tenant's model ids and suffixes;
/readyz, serving 503s, job errors and resume events carried exception texts and absolute server paths;
the tokenization cache was shared across projects, and its "from the tokenization cache" event told
project B that another project had trained on identical data."""

from __future__ import annotations

import time

import httpx

from tests.security.conftest import upload_example

JOBS = "/v1/fine_tuning/jobs"


def test_metrics_carry_no_tenant_identifiers(pg_stack, task_models):
    model = task_models[("text-classification", "full")]["fine_tuned_model"]
    with pg_stack.client() as c:
        assert c.post(f"/v1/models/{model}/predict", json={"inputs": "a great film"}).status_code == 200
    text = httpx.get(f"{pg_stack.url}/metrics").text
    assert "finetune_predict_requests_total" in text
    assert "ft:" not in text and "proj-" not in text and model.rsplit(":", 1)[-1] not in text


def test_readiness_says_what_is_down_without_paths_or_exception_text(quiet_stack):
    storage = quiet_stack.root / "data" / "storage"
    aside = storage.with_name("storage.aside")
    storage.rename(aside)
    storage.write_text("not a folder")  # every write into storage now fails, even as root
    try:
        response = httpx.get(f"{quiet_stack.url}/readyz")
    finally:
        storage.unlink()
        aside.rename(storage)
    assert response.status_code == 503
    assert response.json()["checks"]["storage"] == "unavailable"
    assert str(quiet_stack.root) not in response.text and "Error" not in response.text
    assert httpx.get(f"{quiet_stack.url}/readyz").status_code == 200


def test_a_failed_jobs_error_names_no_server_path(quiet_stack):
    with quiet_stack.client() as c:
        file_id = upload_example(c)
        project_files = next((quiet_stack.root / "data" / "storage" / "files").iterdir())
        job = c.post(JOBS, json={"model": "tiny/bert", "training_file": file_id}).json()
        (project_files / file_id).unlink()  # lost from storage before any worker read it
        quiet_stack.start_worker()
        failed = quiet_stack.wait_for_job(job["id"], timeout=180)
        events = quiet_stack.events(job["id"])
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "file_not_found" and file_id in failed["error"]["message"], failed["error"]
    texts = [failed["error"]["message"]] + [e["message"] + str(e.get("data")) for e in events]
    for text in texts:
        assert str(quiet_stack.root) not in text and "/tmp" not in text, text


def test_the_tokenization_cache_is_per_project(pg_stack, project):
    def train(client) -> str:
        key = client.headers["Authorization"].split()[1]
        # One seed: the rows held out for evaluation, and so the tokenized sets, are the same each time.
        job = client.post(JOBS, json={"model": "tiny/bert", "training_file": upload_example(client), "seed": 7,
                                      "hyperparameters": {"n_epochs": 1}}).json()
        assert pg_stack.wait_for_job(job["id"], timeout=240, key=key)["status"] == "succeeded"
        return next(e["message"] for e in pg_stack.events(job["id"], key) if e["message"].startswith("Tokenized"))

    _, key = project
    with pg_stack.client(key) as a:
        first = train(a)
        again = train(a)  # the same bytes, the same project: from the cache
    # Another project with the very same bytes (a fresh one: no earlier test of it trained on them).
    name = f"sec-cache-{time.monotonic_ns()}"
    other = pg_stack.cli("keys", "create", "--project", name, "--scope", "train").strip()
    with pg_stack.client(other) as b:
        theirs = train(b)
    assert "from the tokenization cache" not in first
    assert "from the tokenization cache" in again
    assert "from the tokenization cache" not in theirs

