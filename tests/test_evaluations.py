"""Evaluations (POST /v1/evaluations) through the real stack: a classifier, its checkpoint, base and fine-tuned
chat models and preference pairs scored by a real worker; the numbers a job reported are the numbers an
evaluation of its model on the same file gives; result files, side-by-side lists, cancel, the quota, and
every refusal naming its field."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.conftest import upload
from tests.support import task_data as data

EVALUATIONS = "/v1/evaluations"
TERMINAL = {"succeeded", "failed", "cancelled"}
# Tiny random models need a bold learning rate to learn in a few steps; evaluations and checkpoints at
# step 6 and 12 (the last), so a checkpoint has an evaluation of its own step.
CLASSIFIER = {"n_epochs": 2, "batch_size": 16, "learning_rate": 2e-3, "eval_every": 6, "checkpoint_every": 6}
DPO = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 8, "learning_rate": 2e-3}}}


def _file(c, name: str, rows: list[dict]) -> str:
    response = upload(c, name, data.jsonl(rows))
    assert response.status_code == 200 and response.json()["status"] == "processed", response.text
    return response.json()["id"]


def _wait(stack, evaluation_id: str, key: str | None = None, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    with stack.client(key) as c:
        while time.monotonic() < deadline:
            evaluation = c.get(f"{EVALUATIONS}/{evaluation_id}").json()
            if evaluation["status"] in TERMINAL:
                return evaluation
            time.sleep(0.2)
    raise AssertionError(f"evaluation {evaluation_id} did not end in {timeout}s: {evaluation}\n{stack.log()}")


def _evaluate(c, **body) -> dict:
    response = c.post(EVALUATIONS, json=body)
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["object"] == "evaluation" and created["status"] == "queued", created
    return created


@pytest.fixture(scope="module")
def trained(pg_stack):
    """A classifier trained with a validation file, and a chat model trained with DPO on preference pairs
    with a validation file of pairs: submitted together, waited for."""
    with pg_stack.client() as c:
        files = {"train": _file(c, "sentiment.jsonl", data.sentiment(96)),
                 "valid": _file(c, "sentiment-valid.jsonl", data.sentiment(32, seed=1)),
                 "chat_valid": _file(c, "chat-valid.jsonl", data.chat(16, seed=1)),
                 "pairs_train": _file(c, "pairs.jsonl", data.preference(32)),
                 "pairs": _file(c, "pairs-valid.jsonl", data.preference(16, seed=1))}
        jobs = {}
        for name, body in (
                ("classifier", {"model": "tiny/bert", "training_file": files["train"], "seed": 3,
                                "validation_file": files["valid"], "hyperparameters": CLASSIFIER}),
                ("dpo", {"model": "tiny/gpt2", "training_file": files["pairs_train"], "seed": 1,
                         "validation_file": files["pairs"], "chat_template": data.CHATML, "method": DPO})):
            response = c.post("/v1/fine_tuning/jobs", json=body)
            assert response.status_code == 200, response.text
            jobs[name] = response.json()["id"]
        done = {name: pg_stack.wait_for_job(job_id) for name, job_id in jobs.items()}
        for name, job in done.items():
            assert job["status"] == "succeeded", (name, job, pg_stack.log()[-3000:])
        checkpoints = c.get(f"/v1/fine_tuning/jobs/{jobs['classifier']}/checkpoints").json()["data"]
    return {"files": files, "jobs": done, "checkpoint": next(k for k in checkpoints if k["step_number"] == 6)}


def test_a_fine_tuned_model_and_its_checkpoint_score_what_their_job_reported(pg_stack, trained):
    job, checkpoint, valid = trained["jobs"]["classifier"], trained["checkpoint"], trained["files"]["valid"]
    with pg_stack.client() as c:
        of_model = _evaluate(c, model=job["fine_tuned_model"], file=valid)
        of_checkpoint = _evaluate(c, model=checkpoint["id"], file=valid)  # ftckpt-…, as the job lists it
        model_done, checkpoint_done = _wait(pg_stack, of_model["id"]), _wait(pg_stack, of_checkpoint["id"])
        for done in (model_done, checkpoint_done):
            assert done["status"] == "succeeded", (done, pg_stack.log()[-3000:])
            assert done["task"] == "text-classification" and done["base_model"] == "tiny/bert"
            assert done["progress"]["percent"] == 100.0 and done["finished_at"] >= done["created_at"]
        # What the job measured on its validation file, the evaluation measures on the same file.
        for name in ("eval_loss", "eval_accuracy", "eval_f1_macro"):
            assert model_done["metrics"][name] == pytest.approx(job["metrics"][name], abs=1e-6), name
            assert checkpoint_done["metrics"][name] == pytest.approx(checkpoint["metrics"][name], abs=1e-6), name

        result = c.get(f"/v1/files/{model_done['result_files'][0]}/content")
        assert result.status_code == 200
        lines = [json.loads(line) for line in result.text.splitlines()]
        assert [row["line"] for row in lines] == list(range(1, 33))
        assert all(row["reference"] in ("good", "bad") and row["prediction"][0]["label"] in ("good", "bad")
                   and isinstance(row["input"], str) for row in lines)
        accuracy = sum(row["prediction"][0]["label"] == row["reference"] for row in lines) / len(lines)
        assert accuracy == pytest.approx(model_done["metrics"]["eval_accuracy"])

        # Two models on one file, side by side; the model filter; newest first.
        listed = c.get(EVALUATIONS, params={"file": valid, "limit": 100}).json()["data"]
        assert [e["id"] for e in listed] == [of_checkpoint["id"], of_model["id"]]
        assert {e["model"]: e["metrics"]["eval_accuracy"] for e in listed} == {
            job["fine_tuned_model"]: model_done["metrics"]["eval_accuracy"],
            checkpoint["id"]: checkpoint_done["metrics"]["eval_accuracy"]}
        only = c.get(EVALUATIONS, params={"model": job["fine_tuned_model"]}).json()["data"]
        assert [e["id"] for e in only] == [of_model["id"]]
        page = c.get(EVALUATIONS, params={"file": valid, "limit": 1}).json()
        assert [e["id"] for e in page["data"]] == [of_checkpoint["id"]] and page["has_more"]
        rest = c.get(EVALUATIONS, params={"file": valid, "after": page["last_id"]}).json()
        assert [e["id"] for e in rest["data"]] == [of_model["id"]] and not rest["has_more"]

        events = c.get(f"{EVALUATIONS}/{of_model['id']}/events", params={"limit": 100}).json()["data"]
        messages = " | ".join(e["message"] for e in events)
        assert "Evaluation queued" in messages and "Evaluation finished" in messages
        assert events[0]["data"]["status"] == "succeeded"

        # Evaluations are not fine-tuning jobs.
        jobs = c.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
        assert not any(j["id"].startswith("eval-") for j in jobs) and job["id"] in {j["id"] for j in jobs}
        for path in (f"/v1/fine_tuning/jobs/{of_model['id']}", f"/v1/fine_tuning/jobs/{of_model['id']}/events"):
            assert c.get(path).status_code == 404
        assert c.post(f"/v1/fine_tuning/jobs/{of_model['id']}/cancel").status_code == 404
        assert c.get(f"{EVALUATIONS}/{job['id']}").status_code == 404


def test_chat_perplexity_of_a_base_and_a_fine_tuned_model(pg_stack, trained):
    chat, valid = trained["jobs"]["dpo"], trained["files"]["chat_valid"]
    with pg_stack.client() as c:
        base = _evaluate(c, model="tiny/gpt2", file=valid, chat_template=data.CHATML)
        tuned = _evaluate(c, model=chat["fine_tuned_model"], file=valid, metrics=["eval_perplexity"])
        base, tuned = _wait(pg_stack, base["id"]), _wait(pg_stack, tuned["id"])
        assert base["status"] == tuned["status"] == "succeeded", (base, tuned, pg_stack.log()[-3000:])
        assert set(base["metrics"]) == {"eval_loss", "eval_perplexity"} and set(tuned["metrics"]) == {"eval_perplexity"}
        assert tuned["metrics"]["eval_perplexity"] < base["metrics"]["eval_perplexity"]
        rows = c.get(f"/v1/files/{tuned['result_files'][0]}/content").text.splitlines()
        first = json.loads(rows[0])
        assert len(rows) == 16 and first["reference"] in ("good", "bad") and isinstance(first["prediction"], str)
        assert first["input"][-1]["role"] == "user"  # the conversation up to the answer it predicts


def test_preference_reward_accuracy_against_a_reference_model(pg_stack, trained):
    dpo, pairs = trained["jobs"]["dpo"], trained["files"]["pairs"]
    with pg_stack.client() as c:
        done = _wait(pg_stack, _evaluate(c, model=dpo["fine_tuned_model"], file=pairs, reference_model="tiny/gpt2",
                                         beta=dpo["hyperparameters"]["beta"])["id"])
        assert done["status"] == "succeeded", (done, pg_stack.log()[-3000:])
        metrics = done["metrics"]
        assert done["reference_model"] == "tiny/gpt2" and done["note"] is None
        # The rewards against the job's own reference (its base) on its validation pairs: what DPO reported.
        assert metrics["eval_reward_margin"] != 0
        for name in ("eval_reward_accuracy", "eval_reward_margin", "eval_reward_chosen", "eval_reward_rejected",
                     "eval_loss"):
            assert metrics[name] == pytest.approx(dpo["metrics"][name], abs=1e-4), (name, metrics, dpo["metrics"])
        rows = [json.loads(line) for line in c.get(f"/v1/files/{done['result_files'][0]}/content").text.splitlines()]
        assert len(rows) == 16 and {"reward_chosen", "reward_rejected"} <= set(rows[0])
        won = sum(row["prediction"] == row["reference"] == "preferred_output" for row in rows)
        assert won / len(rows) == pytest.approx(metrics["eval_reward_accuracy"])


def test_cancel_and_the_active_jobs_quota(pg_stack, trained):
    name = f"eval-quota-{uuid.uuid4().hex[:8]}"
    key = pg_stack.cli("keys", "create", "--project", name, "--scope", "train").strip()
    pg_stack.cli("quota", "set", "active_jobs=1", "--project", name)
    with pg_stack.client(key) as c:
        pairs = _file(c, "pairs.jsonl", data.preference(16, seed=1))
        # No reference_model: the model's base, which for a base model is itself, and the answer says so.
        first = _evaluate(c, model="tiny/gpt2", file=pairs, chat_template=data.CHATML)
        assert first["reference_model"] == "tiny/gpt2" and "every pair ties" in first["note"]
        over = c.post(EVALUATIONS, json={"model": "tiny/gpt2", "file": pairs, "chat_template": data.CHATML})
        assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded"
        cancelled = c.post(f"{EVALUATIONS}/{first['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        done = _wait(pg_stack, first["id"], key=key)
        assert done["status"] == "cancelled" and done["metrics"] is None and done["result_files"] == []
        again = c.post(f"{EVALUATIONS}/{first['id']}/cancel")
        assert again.status_code == 409 and again.json()["error"]["code"] == "evaluation_not_cancellable"


def test_refusals_name_the_field(pg_stack, trained):
    classifier, files = trained["jobs"]["classifier"], trained["files"]
    other = pg_stack.cli("keys", "create", "--project", f"eval-other-{uuid.uuid4().hex[:8]}", "--scope",
                         "train").strip()
    with pg_stack.client() as c, pg_stack.client(other) as stranger:
        own_file = _file(stranger, "valid.jsonl", data.sentiment(8))
        cases = [
            (c, {"model": classifier["fine_tuned_model"], "file": files["chat_valid"]}, "file", "task_mismatch",
             "text-classification"),
            (stranger, {"model": classifier["fine_tuned_model"], "file": own_file}, "model", "model_not_found",
             "Unknown model"),
            (c, {"model": classifier["fine_tuned_model"], "file": files["valid"], "metrics": ["accuracy", "bleu"]},
             "metrics", "invalid_value", "eval_accuracy"),
            (c, {"model": "tiny/bert", "file": files["valid"]}, "model", "model_not_evaluable", "no trained"),
            (c, {"model": "tiny/gpt2", "file": files["chat_valid"]}, "chat_template", "invalid_value",
             "no chat template"),
            (c, {"model": classifier["fine_tuned_model"], "file": "file-nope"}, "file", "file_not_found", "No file"),
            (c, {"model": trained["jobs"]["dpo"]["fine_tuned_model"], "file": files["pairs"],
                 "reference_model": "tiny/bert"}, "reference_model", "invalid_value", "same base"),
            (c, {"model": classifier["fine_tuned_model"], "file": files["valid"], "metrics": ["x"] * 33}, "metrics",
             None, None),
        ]
        for client, body, param, code, words in cases:
            response = client.post(EVALUATIONS, json=body)
            assert response.status_code == 400, (body, response.text)
            error = response.json()["error"]
            assert error["param"] == param and (code is None or error["code"] == code), (body, error)
            assert words is None or words in error["message"], (body, error)
        # Another project's evaluation is as unknown as one that does not exist.
        mine = c.get(EVALUATIONS, params={"limit": 1}).json()["data"]
        if mine:
            assert stranger.get(f"{EVALUATIONS}/{mine[0]['id']}").status_code == 404
            assert stranger.post(f"{EVALUATIONS}/{mine[0]['id']}/cancel").status_code == 404
        assert stranger.get(EVALUATIONS).json()["data"] == []
