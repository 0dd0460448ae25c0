"""Jobs that are never lost, and that say how far they are: a worker killed with -9 mid-training, a
Redis restart, pause/resume, live events over SSE with resumption, checkpoints and metrics.
Real PostgreSQL, real Redis, real worker processes."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from tests.conftest import EXAMPLES, upload
from tests.support.live import LiveStack, free_port, postgres_database, redis_url, unavailable
from tests.support.webhooks import HookServer, verify_signed

# Long enough to interrupt (a few thousand tiny steps), checkpointing often.
LONG = {"n_epochs": 40, "batch_size": 4, "learning_rate": 2e-3, "checkpoint_every": 200}
FAST_LEASES = {"lease_seconds": "4", "reaper_interval_s": "1", "progress_interval_s": "0.3", "sse_ping_s": "1",
               "webhook_poll_s": "0.2", "webhook_backoff_s": "0.5",
               # The webhook receiver listens on 127.0.0.1, which deliveries reach only when allowed.
               "webhook_allowed_networks": '["127.0.0.0/8"]'}


@pytest.fixture(scope="module")
def stack(base_models_dir, tmp_path_factory):
    """Workers are started and killed by the tests themselves."""
    with postgres_database() as db_url:
        live = LiveStack(tmp_path_factory.mktemp("lifecycle"), base_models_dir, database_url=db_url,
                         broker_url=redis_url(10), embedded_worker=False, **FAST_LEASES)
        with live.running():
            yield live


def _start_job(stack, **hyperparameters) -> str:
    with stack.client() as c:
        f = upload(c, EXAMPLES / "sentiment.csv").json()
        v = upload(c, EXAMPLES / "sentiment_validation.csv").json()
        job = c.post("/v1/fine_tuning/jobs", json={"model": "tiny/bert", "training_file": f["id"],
                                                   "validation_file": v["id"],
                                                   "hyperparameters": {**LONG, **hyperparameters}})
        assert job.status_code == 200, job.text
        return job.json()["id"]


def _checkpoints(stack, job_id) -> list[dict]:
    with stack.client() as c:
        return c.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]


def _assert_continuous(events: list[dict]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_worker_killed_mid_training_resumes_from_checkpoint(stack):
    worker = stack.start_worker()
    job_id = _start_job(stack)
    stack.wait_for_job(job_id, until=lambda j: len(_checkpoints(stack, j["id"])) >= 1 and j["status"] == "running",
                       timeout=180)
    stack.kill_worker(worker)
    killed_at = max(c["step_number"] for c in _checkpoints(stack, job_id))

    stack.start_worker()
    done = stack.wait_for_job(job_id, timeout=300)
    assert done["status"] == "succeeded", (done, stack.log())
    assert done["attempt"] == 2
    total = 40 * 50  # 200 rows / batch 4 = 50 steps per epoch
    assert done["progress"]["step"] == done["progress"]["total_steps"] == total

    events = stack.events(job_id)
    _assert_continuous(events)
    messages = [e["message"] for e in events]
    assert any("stopped responding; job re-queued" in m for m in messages)
    resumed = next(i for i, m in enumerate(messages) if m.startswith("Resuming from checkpoint"))
    assert f"checkpoint-{killed_at}" in messages[resumed] or killed_at <= total
    # No repeated epochs: every training log after the resume is past the checkpoint it resumed from.
    resumed_step = int(messages[resumed].split("checkpoint-")[1].split(".")[0])
    later = [e["data"]["step"] for e in events[resumed:] if e["type"] == "metrics" and "train_loss" in e["data"]]
    assert later and min(later) > resumed_step
    with stack.client() as c:
        models = [m for m in c.get("/v1/models").json()["data"] if m.get("job_id") == job_id]
    assert len(models) == 1


def test_redis_restart_during_a_running_job(base_models_dir, tmp_path):
    server = shutil.which("redis-server")
    if server is None:
        unavailable("redis-server is not installed")
    port = free_port()
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis_proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        with postgres_database() as db_url:
            live = LiveStack(tmp_path, base_models_dir, database_url=db_url, broker_url=f"redis://127.0.0.1:{port}/0",
                             **FAST_LEASES)
            with live.running():
                job_id = _start_job(live, n_epochs=25, checkpoint_every=400)
                live.wait_for_job(job_id, until=lambda j: (j["progress"] or {}).get("step", 0) > 20, timeout=120)
                redis_proc.terminate()
                redis_proc.wait()
                time.sleep(2)
                redis_proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
                done = live.wait_for_job(job_id, timeout=300)
                assert done["status"] == "succeeded", (done, live.log())
                # The worker reconnected: a job submitted after the restart runs too.
                second = _start_job(live, n_epochs=1)
                assert live.wait_for_job(second, timeout=180)["status"] == "succeeded", live.log()
    finally:
        redis_proc.terminate()
        redis_proc.wait()


def _read_stream(stack, job_id: str, last_event_id: str | None, max_events: int | None) -> tuple[list[dict], int]:
    """Reads SSE frames; returns the events and how many keep-alive comments were seen."""
    import json

    headers = {"Authorization": f"Bearer {stack.key}", "Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    events, pings, frame = [], 0, {}
    with httpx.stream("GET", f"{stack.url}/v1/fine_tuning/jobs/{job_id}/events", headers=headers, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith(":"):
                pings += 1
            elif line.startswith("id:"):
                frame["id"] = line[3:].strip()
            elif line.startswith("data:"):
                frame["data"] = json.loads(line[5:].strip())
            elif line == "" and frame:
                assert frame["id"] == str(frame["data"]["seq"])
                events.append(frame["data"])
                frame = {}
                if max_events and len(events) >= max_events:
                    break
    return events, pings


def test_sse_stream_resumes_with_last_event_id(stack):
    stack.start_worker()
    job_id = _start_job(stack, n_epochs=15)
    first, _ = _read_stream(stack, job_id, None, max_events=4)
    assert [e["seq"] for e in first] == [1, 2, 3, 4]
    rest, pings = _read_stream(stack, job_id, first[-1]["id"] and str(first[-1]["seq"]), None)
    seen = first + rest
    _assert_continuous(seen)
    assert seen[-1]["data"]["status"] == "succeeded"  # the stream ended after the terminal event
    assert seen == stack.events(job_id)
    assert pings >= 1
    again, _ = _read_stream(stack, job_id, str(seen[-1]["seq"]), None)  # nothing missed: returns at once
    assert again == []


def test_pause_and_resume_continue_from_the_pause_checkpoint(stack):
    stack.start_worker()
    job_id = _start_job(stack, n_epochs=20)
    stack.wait_for_job(job_id, until=lambda j: (j["progress"] or {}).get("step", 0) > 30, timeout=120)
    with stack.client() as c:
        assert c.post(f"/v1/fine_tuning/jobs/{job_id}/pause").status_code == 200
    paused = stack.wait_for_job(job_id, until=lambda j: j["status"] in ("paused", "succeeded", "failed"), timeout=60)
    assert paused["status"] == "paused", paused
    paused_step = paused["progress"]["step"]
    assert paused_step in {c["step_number"] for c in _checkpoints(stack, job_id)}

    with stack.client() as c:
        resumed = c.post(f"/v1/fine_tuning/jobs/{job_id}/resume").json()
        assert resumed["status"] == "queued"
        assert c.post(f"/v1/fine_tuning/jobs/{job_id}/resume").status_code == 409
    done = stack.wait_for_job(job_id, timeout=240)
    assert done["status"] == "succeeded" and done["progress"]["step"] == 20 * 50
    messages = [e["message"] for e in stack.events(job_id)]
    assert f"Resuming from checkpoint checkpoint-{paused_step}." in messages


def test_metrics_checkpoints_and_result_file(stack):
    stack.start_worker()
    job_id = _start_job(stack, n_epochs=4, checkpoint_every=50, eval_every=50)
    done = stack.wait_for_job(job_id, timeout=240)
    assert done["status"] == "succeeded", stack.log()
    with stack.client() as c:
        series = c.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["data"]
        evals = [p for p in series if "eval_accuracy" in p]
        # Step 0 is the base model's score (the "before" of before → after), then the schedule's.
        assert [p["step"] for p in evals][:5] == [0, 50, 100, 150, 200]
        assert all("eval_f1_macro" in p for p in evals)
        assert evals[0]["eval_accuracy"] == done["evaluation"]["before"]
        assert any("train_loss" in p and "learning_rate" in p for p in series)
        assert done["metrics"]["eval_accuracy"] == pytest.approx(evals[-1]["eval_accuracy"])

        checkpoints = c.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
        assert [ck["step_number"] for ck in checkpoints] == [200, 150, 100]  # the newest 3 are kept
        newest = checkpoints[0]
        assert newest["object"] == "fine_tuning.job.checkpoint"
        assert newest["fine_tuned_model_checkpoint"] == f"{done['fine_tuned_model']}:ckpt-step-200"
        answer = c.post(f"/v1/models/{newest['fine_tuned_model_checkpoint']}/predict", json={"inputs": "Superb!"})
        assert answer.status_code == 200 and {d["label"] for d in answer.json()[0]} == {"positive", "negative"}

        csv_id, _tensorboard = done["result_files"]  # the metrics CSV, then the TensorBoard events
        content = c.get(f"/v1/files/{csv_id}/content").text.splitlines()
        assert content[0].startswith("step,epoch,train_loss") and "eval_accuracy" in content[0]
        assert len(content) == len(series) + 1


def test_openai_sdk_follows_and_controls_jobs(stack):
    from openai import OpenAI

    stack.start_worker()
    # The SDK's default retries, as real clients run it: a job-control test spans idle minutes.
    client = OpenAI(base_url=f"{stack.url}/v1", api_key=stack.key)
    job_id = _start_job(stack, n_epochs=30)
    stack.wait_for_job(job_id, until=lambda j: len(_checkpoints(stack, j["id"])) >= 1, timeout=180)
    assert client.fine_tuning.jobs.pause(job_id).id == job_id
    stack.wait_for_job(job_id, until=lambda j: j["status"] == "paused", timeout=60)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id).data
    assert checkpoints and checkpoints[0].fine_tuned_model_checkpoint.endswith(f"ckpt-step-{checkpoints[0].step_number}")
    assert client.fine_tuning.jobs.resume(job_id).status == "queued"
    stack.wait_for_job(job_id, until=lambda j: j["status"] == "running", timeout=60)
    client.fine_tuning.jobs.cancel(job_id)
    assert stack.wait_for_job(job_id, timeout=60)["status"] == "cancelled"
    events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
    assert events[0].message == "Job cancelled." and events[0].object == "fine_tuning.job.event"


def test_webhook_delivered_when_a_job_succeeds(stack):
    server = HookServer(statuses=(503, 200))
    try:
        stack.start_worker()
        with stack.client() as c:
            endpoint = c.post("/v1/webhooks", json={"url": server.url}).json()
        job_id = _start_job(stack, n_epochs=1)
        assert stack.wait_for_job(job_id, timeout=180)["status"] == "succeeded"
        deadline = time.monotonic() + 60
        while len(server.requests) < 2:  # the 503 is retried with backoff
            assert time.monotonic() < deadline, stack.log()
            time.sleep(0.2)
        first, second = server.requests[:2]
        assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
        event = verify_signed(second, endpoint["secret"])
        assert event["type"] == "fine_tuning.job.succeeded" and event["data"]["id"] == job_id
        assert event["data"]["fine_tuned_model"].startswith("ft:tiny/bert:")
    finally:
        server.close()


def test_api_restart_loses_nothing(base_models_dir, tmp_path):
    """The API holds no state of its own: restarted mid-job, it serves the same job, whose worker went on."""
    with postgres_database() as db_url:
        live = LiveStack(tmp_path, base_models_dir, database_url=db_url, broker_url=redis_url(11),
                         embedded_worker=False, **FAST_LEASES)
        with live.running():
            live.start_worker()
            job_id = _start_job(live, n_epochs=15)
            live.wait_for_job(job_id, until=lambda j: (j["progress"] or {}).get("step", 0) > 20, timeout=120)
            live.stop_api()
            with live.running():
                done = live.wait_for_job(job_id, timeout=240)
                assert done["status"] == "succeeded" and done["attempt"] == 1, live.log()
                _assert_continuous(live.events(job_id))
