"""Data-parallel jobs: ``hyperparameters.devices: 2`` runs the training core in two processes under
``accelerate launch`` (gloo on CPU, one process per GPU on GPU machines), through the API and a real
worker. Same data, same seed, same examples per step: the model must come out as good as with one."""

from __future__ import annotations

import time

import pytest
import torch

from tests.conftest import EXAMPLES, upload

# Two processes need two GPUs where there are GPUs; CPU machines (CI) run them on gloo.
pytestmark = pytest.mark.skipif(torch.cuda.device_count() == 1, reason="one GPU: a two-device job needs two")

FAST = {"n_epochs": 6, "learning_rate": 2e-3, "batch_size": 16}


def _train(stack, c, train_id, valid_id, **hyperparameters):
    created = c.post("/v1/fine_tuning/jobs", json={
        "model": "tiny/bert", "training_file": train_id, "validation_file": valid_id, "seed": 7,
        "hyperparameters": {**FAST, **hyperparameters}})
    assert created.status_code == 200, created.text
    done = stack.wait_for_job(created.json()["id"])
    assert done["status"] == "succeeded", (done, stack.log()[-3000:])
    return done


def test_two_processes_train_as_well_as_one(pg_stack):
    with pg_stack.client() as c:
        train = upload(c, EXAMPLES / "sentiment.csv").json()["id"]
        valid = upload(c, EXAMPLES / "sentiment_validation.csv").json()["id"]
        one = _train(pg_stack, c, train, valid)
        two = _train(pg_stack, c, train, valid, devices=2)

        # The same 16 examples per optimiser step, split 8 + 8 across the processes.
        assert one["hyperparameters"]["per_device_batch_size"] == 16
        assert (two["hyperparameters"]["devices"], two["hyperparameters"]["per_device_batch_size"],
                two["hyperparameters"]["gradient_accumulation_steps"]) == (2, 8, 1)
        assert one["progress"]["step"] == two["progress"]["step"] == 78  # ceil(200 / 16) × 6
        # Same quality: both learn the task, within four of the 40 validation rows of each other (the
        # processes see the examples in another order, which alone moves a tiny model by a row or two).
        assert one["metrics"]["eval_accuracy"] >= 0.85 and two["metrics"]["eval_accuracy"] >= 0.85
        assert abs(one["metrics"]["eval_accuracy"] - two["metrics"]["eval_accuracy"]) <= 0.1 + 1e-9, \
            (one["metrics"], two["metrics"])
        assert abs(one["metrics"]["train_loss"] - two["metrics"]["train_loss"]) < 0.15

        # The first process's reports reach the job: metrics events, in order, with no gap.
        events = pg_stack.events(two["id"])
        seqs = sorted(e["seq"] for e in events)
        assert seqs == list(range(1, len(seqs) + 1))
        messages = [e["message"] for e in events]
        assert sum(e["type"] == "metrics" for e in events) >= 5
        # The second job read the same file, tokenizer and settings: it skipped tokenizing.
        assert any("from the tokenization cache" in m for m in messages), messages
        answer = c.post(f"/v1/models/{two['fine_tuned_model']}/predict", json={"inputs": "A wonderful film."})
        assert answer.status_code == 200, answer.text


def test_cancelling_a_two_process_job_stops_both(pg_stack):
    with pg_stack.client() as c:
        train = upload(c, EXAMPLES / "sentiment.csv").json()["id"]
        job = c.post("/v1/fine_tuning/jobs", json={"model": "tiny/bert", "training_file": train,
                                                   "hyperparameters": {**FAST, "n_epochs": 100, "devices": 2}}).json()
        pg_stack.wait_for_job(job["id"], until=lambda j: (j.get("progress") or {}).get("step", 0) > 0)
        asked = time.monotonic()
        assert c.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").status_code == 200
        done = pg_stack.wait_for_job(job["id"], timeout=120)
        assert done["status"] == "cancelled", (done.get("error"), pg_stack.log()[-3000:])
        assert time.monotonic() - asked < 60
        assert done["progress"]["step"] < done["progress"]["total_steps"]


def test_a_job_waits_for_a_worker_with_the_devices_it_asks_for(pg_stack):
    """The stack's worker offers two devices (FT_WORKER_DEVICES). A three-device job would fail there, so
    it is not sent there: its message waits on the queue only workers with three or more consume."""
    import redis

    from app.jobs.queue import job_queue, worker_queues

    base = pg_stack.env["FT_GPU_QUEUE"]
    assert worker_queues(base, 3) == [base, f"{base}-x2", f"{base}-x3"] and job_queue(base, 1) == base
    with pg_stack.client() as c:
        train = upload(c, EXAMPLES / "sentiment.csv").json()["id"]
        job = c.post("/v1/fine_tuning/jobs", json={"model": "tiny/bert", "training_file": train,
                                                   "hyperparameters": {**FAST, "devices": 3}}).json()
        time.sleep(3)  # ample for the idle worker to take a message from a queue it consumes
        assert c.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "queued"
        assert redis.Redis.from_url(pg_stack.env["FT_BROKER_URL"]).llen(job_queue(base, 3)) == 1
        assert c.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"


def test_out_of_memory_in_one_process_restarts_both_with_half_the_batch(base_models_dir, tmp_path):
    """The launcher alone (no API): the second process runs out of memory after a checkpoint; both
    restart from that checkpoint with half the per-device batch, the same examples per step."""
    from app.data.scan import scan_file
    from app.ml import hyperparams
    from app.ml.tasks import get_task
    from tests.test_training_core import Recorder
    from worker.launcher import launch
    from worker.training import DataFile, TrainingSpec

    mapping = {"text": "text", "label": "label"}
    task = get_task("text-classification")
    plan = task.plan(mapping, scan_file(EXAMPLES / "sentiment.csv").profile(), None)
    requested = {**FAST, "n_epochs": 2, "devices": 2, "checkpoint_every": 3}
    spec = TrainingSpec("text-classification", str(base_models_dir / "tiny" / "bert"), mapping, plan,
                        hyperparams.resolve_hyperparameters(requested, 200, 128, 30, task=task), seed=7,
                        checkpoint_dir=tmp_path / "checkpoints",
                        callbacks=["tests.support.faults:SecondProcessOutOfMemoryAfterStep4"])
    reporter = Recorder()
    outcome = launch(spec, DataFile(EXAMPLES / "sentiment.csv", "csv"), None, tmp_path / "model", reporter,
                     tmp_path / "work", progress_interval_s=0, devices=2)

    assert not outcome.stopped and (tmp_path / "model" / "model.safetensors").exists()
    # 16 examples per step: 8 per process at first, then 4 per process × 2 accumulated.
    assert (outcome.hyperparameters["per_device_batch_size"], outcome.hyperparameters["gradient_accumulation_steps"],
            outcome.hyperparameters["batch_size"]) == (4, 2, 16)
    messages = [message for _, message in reporter.events]
    assert sum("Out of GPU memory with a per-device batch of 8" in m for m in messages) == 1, messages
    assert "Resuming from checkpoint checkpoint-3." in messages
    assert outcome.steps == reporter.snapshots[-1]["total_steps"] and outcome.metrics["train_loss"] > 0
