"""Token classification end to end: detection, validation before queueing, training with labels on
first sub-tokens, seqeval metrics, and entity groups with character offsets at prediction."""

from __future__ import annotations

import json

from tests.conftest import upload
from tests.support import task_data


def ner_jsonl(n: int, seed: int = 0) -> bytes:
    return task_data.jsonl(task_data.ner(n, seed))


def test_detected_and_validated_before_queueing(client):
    f = upload(client, "ner.jsonl", ner_jsonl(30)).json()
    assert f["detected_task"] == "token-classification"
    assert f["detected_column_mapping"] == {"tokens": "tokens", "tags": "ner_tags"}

    bad = ner_jsonl(5).decode().splitlines()
    bad[2] = json.dumps({"tokens": ["a", "b", "c"], "ner_tags": ["O", "B-PER"]})
    broken = upload(client, "ragged.jsonl", ("\n".join(bad) + "\n").encode()).json()
    response = client.post("/v1/fine_tuning/jobs", json={"model": "tiny/bert", "training_file": broken["id"]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "column_mapping.tags" and "Line 3" in error["message"]


def test_train_evaluate_and_serve_entities(pg_stack):
    with pg_stack.client() as c:
        train = upload(c, "ner.jsonl", ner_jsonl(300)).json()
        valid = upload(c, "ner-valid.jsonl", ner_jsonl(40, seed=1)).json()
        job = c.post("/v1/fine_tuning/jobs", json={
            "model": "tiny/bert", "training_file": train["id"], "validation_file": valid["id"],
            "seed": 1, "hyperparameters": {"n_epochs": 8, "learning_rate": 3e-3, "batch_size": 16}}).json()
        assert job["task"] == "token-classification", job
        done = pg_stack.wait_for_job(job["id"], timeout=300)
        assert done["status"] == "succeeded", (done, pg_stack.log())
        assert done["metrics"]["eval_f1"] >= 0.8, done["metrics"]

        text = "anna rossi visited oslo today"
        groups = c.post(f"/v1/models/{done['fine_tuned_model']}/predict", json={"inputs": text}).json()
        batched = c.post(f"/v1/models/{done['fine_tuned_model']}/predict", json={"inputs": [text, "oslo"]}).json()
        assert batched[0] == groups and len(batched) == 2
        assert [(g["entity_group"], g["word"]) for g in groups] == [("PER", "anna rossi"), ("LOC", "oslo")]
        for g in groups:
            assert text[g["start"]:g["end"]] == g["word"] and 0 < g["score"] <= 1
