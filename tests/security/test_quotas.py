"""Finding 8: no quotas or rate limits anywhere — unlimited queued jobs per project in one FIFO queue
(one tenant starved the GPUs), unlimited event streams, files, storage and webhook endpoints. Now each
project has quotas (defaults in settings, overrides by `finetune quota set`), answered 429
rate_limit_exceeded with Retry-After, and the scheduler takes projects in turn."""

from __future__ import annotations

import time

import httpx

from tests.security.conftest import upload_example

JOBS = "/v1/fine_tuning/jobs"


def _over_quota(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert int(response.headers["retry-after"]) >= 1


def _job(client: httpx.Client, file_id: str, **extra) -> httpx.Response:
    return client.post(JOBS, json={"model": "tiny/bert", "training_file": file_id,
                                   "hyperparameters": {"n_epochs": 1}, **extra})


def test_active_jobs_are_capped_per_project(pg_stack, project):
    name, key = project
    assert "active_jobs" in pg_stack.cli("quota", "set", "active_jobs=1", "--project", name)
    with pg_stack.client(key) as c:
        file_id = upload_example(c)
        first = _job(c, file_id).json()
        _over_quota(_job(c, file_id))
        c.post(f"{JOBS}/{first['id']}/cancel")
        pg_stack.wait_for_job(first["id"], key=key)
        again = _job(c, file_id)
        assert again.status_code == 200, again.text
        c.post(f"{JOBS}/{again.json()['id']}/cancel")


def test_files_and_stored_bytes_are_capped_per_project(pg_stack, project):
    name, key = project
    pg_stack.cli("quota", "set", "files=1", "--project", name)
    with pg_stack.client(key) as c:
        upload_example(c)
        _over_quota(c.post("/v1/files", files={"file": ("b.csv", b"text,label\nhi,1\n")}))
    pg_stack.cli("quota", "set", "files=100", "storage_bytes=100", "--project", name)
    time.sleep(float(pg_stack.env["FT_AUTH_CACHE_S"]) + 0.2)  # the key's project is remembered that long
    with pg_stack.client(key) as c:
        response = c.post("/v1/files", files={"file": ("b.csv", b"text,label\nhi,1\n")})
        _over_quota(response)
        assert response.json()["error"]["param"] == "file"


def test_webhook_endpoints_are_capped_per_project(pg_stack, project):
    name, key = project
    pg_stack.cli("quota", "set", "webhook_endpoints=1", "--project", name)
    with pg_stack.client(key) as c:
        assert c.post("/v1/webhooks", json={"url": "https://93.184.216.34/hooks/a"}).status_code == 200
        _over_quota(c.post("/v1/webhooks", json={"url": "https://93.184.216.34/hooks/b"}))


def test_open_event_streams_are_capped_per_project(pg_stack, project):
    name, key = project
    pg_stack.cli("quota", "set", "event_streams=1", "--project", name)
    with pg_stack.client(key) as c:
        job = _job(c, upload_example(c)).json()
        c.post(f"{JOBS}/{job['id']}/pause")  # a job that is not over keeps its stream open
        events = f"{JOBS}/{job['id']}/events"
        with c.stream("GET", events, params={"stream": "true"}) as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # held: a dropped iterator would close the connection
            next(lines)
            _over_quota(c.get(events, params={"stream": "true"}))
        # Closing the first stream gives its place back.
        deadline = time.monotonic() + 10
        while True:
            with c.stream("GET", events, params={"stream": "true"}) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "a closed stream still counts against the quota"
            time.sleep(0.3)
        c.post(f"{JOBS}/{job['id']}/cancel")


def test_prediction_requests_are_rate_limited_per_project(pg_stack, project, tenants):
    name, key = project
    pg_stack.cli("quota", "set", "requests_per_s=1", "--project", name)
    with pg_stack.client(key) as c:
        statuses = [c.post("/v1/models/ft:tiny/bert::none/predict", json={"inputs": "hi"}) for _ in range(6)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and all(r.status_code in (404, 429) for r in statuses)
    _over_quota(limited[0])
    assert limited[0].headers["x-ratelimit-limit-requests"] == "1"
    with pg_stack.client(tenants.b) as other:  # another project's rate is its own
        assert other.post("/v1/models/ft:tiny/bert::none/predict", json={"inputs": "hi"}).status_code == 404


def _start_order(pg_stack, jobs: dict[str, str]) -> list[str]:
    """The jobs (id → key) in the order a worker started them (event ids are time-ordered to the µs)."""
    started = {}
    for job_id, key in jobs.items():
        events = pg_stack.events(job_id, key)
        first_start = next((e["id"] for e in events if e["message"].startswith("Job started")), None)
        if first_start:
            started[job_id] = first_start
    return sorted(started, key=started.get)


def test_a_project_with_queued_jobs_does_not_delay_another_projects_first_job(pg_stack, project, tenants):
    _, key_a = project
    with pg_stack.client(key_a) as a, pg_stack.client(tenants.b) as b:
        file_a, file_b = upload_example(a), upload_example(b)
        a_jobs = [_job(a, file_a).json()["id"] for _ in range(3)]
        b_job = _job(b, file_b).json()["id"]
        try:
            assert pg_stack.wait_for_job(b_job, timeout=240, key=tenants.b)["status"] == "succeeded"
        finally:
            for job_id in a_jobs:
                a.post(f"{JOBS}/{job_id}/cancel")
    order = _start_order(pg_stack, {**{job_id: key_a for job_id in a_jobs}, b_job: tenants.b})
    # One worker: A's jobs queued first, yet B's only job runs after at most one of them.
    assert order.index(b_job) <= 1, order
