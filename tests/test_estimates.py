"""POST /v1/fine_tuning/jobs/estimate: the job's steps, tokens and seconds per device kind, checked
like a real job, never created — and calibrated by the jobs this deployment has run."""

from __future__ import annotations

import pytest

from tests.conftest import EXAMPLES, upload
from tests.support import task_data as data

FAST = {"n_epochs": 6, "learning_rate": 2e-3, "batch_size": 16}


def test_estimate_matches_the_job_it_describes(pg_stack):
    with pg_stack.client() as c:
        train = upload(c, EXAMPLES / "sentiment.csv").json()["id"]
        valid = upload(c, EXAMPLES / "sentiment_validation.csv").json()["id"]
        body = {"model": "tiny/bert", "training_file": train, "validation_file": valid, "hyperparameters": FAST}
        jobs_before = len(c.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"])

        first = c.post("/v1/fine_tuning/jobs/estimate", json=body)
        assert first.status_code == 200, first.text
        estimate = first.json()
        assert estimate["steps"] == 78 and estimate["examples_per_epoch"] == 200  # ceil(200 / 16) × 6
        assert {"nvidia-h100", "nvidia-a100"} <= set(estimate["estimated_seconds"])
        assert len(c.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]) == jobs_before

        created = c.post("/v1/fine_tuning/jobs", json=body).json()
        done = pg_stack.wait_for_job(created["id"])
        assert done["status"] == "succeeded", done
        assert done["progress"]["step"] == estimate["steps"]
        # The sample is the whole file here, so the token count is exact.
        assert estimate["trained_tokens"] == done["trained_tokens"]

        # Now this project has run a job on this worker's device: estimates use the rate it reached.
        again = c.post("/v1/fine_tuning/jobs/estimate", json=body).json()
        assert again["basis"]["cpu"].startswith("measured")
        assert 0.2 < again["estimated_seconds"]["cpu"] / done["metrics"]["train_runtime"] < 5


def test_estimate_refuses_what_a_job_would_refuse(pg_stack):
    with pg_stack.client() as c:
        train = upload(c, EXAMPLES / "sentiment.csv").json()["id"]
        bad = c.post("/v1/fine_tuning/jobs/estimate", json={"model": "tiny/bert", "training_file": train,
                                                             "column_mapping": {"text": "nope", "label": "label"}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "column_mapping.text", bad.text


@pytest.mark.parametrize(("rows", "model", "extra"), [
    (data.question_answering(12), "tiny/bert", {}),  # windows grouped by row: once answered 500
    (data.ner(12), "tiny/bert", {}),
    (data.multi_label(12), "tiny/bert", {}),
    (data.scores(12), "tiny/bert", {}),
    (data.summarization(12), "tiny/t5", {}),
    (data.prompt_completion(12), "tiny/gpt2", {}),
    (data.chat(12), "tiny/gpt2", {"chat_template": data.CHATML}),
    (data.preference(12), "tiny/gpt2", {"chat_template": data.CHATML, "method": {"type": "dpo"}}),
], ids=["qa", "ner", "multi-label", "regression", "summarization", "completion", "chat", "dpo"])
def test_every_task_gets_an_estimate(client, rows, model, extra):
    f = upload(client, "rows.jsonl", data.jsonl(rows)).json()
    answer = client.post("/v1/fine_tuning/jobs/estimate", json={"model": model, "training_file": f["id"], **extra})
    assert answer.status_code == 200, answer.text
    estimate = answer.json()
    assert estimate["steps"] >= 1 and estimate["trained_tokens"] > 0
    assert estimate["estimated_seconds"] and all(s > 0 for s in estimate["estimated_seconds"].values())
