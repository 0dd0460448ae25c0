"""The operator's view: Prometheus series scraped from a live stack (the API's /metrics and the worker's own
endpoint) exist and move with what happens — jobs queued, run and finished, predictions answered — and the
Grafana dashboard charts series that exist."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import EXAMPLES, upload
from tests.support.live import LiveStack, free_port

JOBS = "/v1/fine_tuning/jobs"
DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "finetune.json"
ONE_EPOCH = {"n_epochs": 1, "learning_rate": 2e-3, "batch_size": 16}


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus exposition, by name and labels."""
    text = httpx.get(url, timeout=10).text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def names(samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture(scope="module")
def monitored(base_models_dir, tmp_path_factory):
    """A stack whose worker starts later (so jobs wait in the queue first), with the worker's metrics port."""
    port = free_port()
    stack = LiveStack(tmp_path_factory.mktemp("monitored-stack"), base_models_dir, embedded_worker=False,
                      worker_metrics_port=port)
    with stack.running():
        yield stack, f"http://127.0.0.1:{port}/metrics"


def api_metrics(stack) -> dict:
    time.sleep(1.1)  # the job counts are read from the database at most once a second
    return scrape(f"{stack.url}/metrics")


def wait_for_worker_endpoint(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the worker's metrics endpoint {url} did not answer in {timeout}s")


def test_jobs_queue_run_and_finish_in_the_metrics(monitored):
    stack, worker_url = monitored
    queue = stack.env["FT_GPU_QUEUE"]
    with stack.client() as c:
        training = upload(c, EXAMPLES / "sentiment.csv").json()["id"]
        body = {"model": "tiny/bert", "training_file": training, "hyperparameters": ONE_EPOCH}
        created_at = time.monotonic()
        first, second = (c.post(JOBS, json=body).json()["id"] for _ in range(2))
        dropped = c.post(JOBS, json=body).json()["id"]
        assert c.post(f"{JOBS}/{dropped}/cancel").json()["status"] == "cancelled"

    # No worker yet: both jobs wait, and the database's counts say so.
    before = api_metrics(stack)
    assert value(before, "finetune_queue_depth", queue=queue) == 2
    assert value(before, "finetune_jobs", kind="fine_tune", status="queued") == 2
    assert value(before, "finetune_jobs", kind="fine_tune", status="cancelled") == 1
    assert value(before, "finetune_jobs", kind="fine_tune", status="succeeded") == 0
    assert value(before, "finetune_jobs", kind="evaluation", status="queued") == 0
    # What only a worker sees is served by the worker, never exported empty by the API.
    assert not {"finetune_job_duration_seconds_count", "finetune_worker_gpu_memory_bytes"} & names(before)

    time.sleep(3)  # a wait the queue-wait histogram must show
    stack.start_worker()
    waited = time.monotonic() - created_at
    for job_id in (first, second):
        assert stack.wait_for_job(job_id)["status"] == "succeeded", stack.log()

    after = api_metrics(stack)
    assert value(after, "finetune_queue_depth", queue=queue) == 0
    assert value(after, "finetune_jobs", kind="fine_tune", status="queued") == 0
    with stack.client() as c:
        listed = c.get(JOBS, params={"limit": 100}).json()["data"]
    for status in ("succeeded", "cancelled", "running", "failed"):
        assert value(after, "finetune_jobs", kind="fine_tune", status=status) == \
            sum(job["status"] == status for job in listed), status

    # The worker ran each job in a pool process of its own, which then exited; the counts outlive them.
    wait_for_worker_endpoint(worker_url)
    worker = scrape(worker_url)
    succeeded = {"kind": "fine_tune", "task": "text-classification", "outcome": "succeeded"}
    assert value(worker, "finetune_job_duration_seconds_count", **succeeded) == 2
    assert value(worker, "finetune_job_duration_seconds_sum", **succeeded) > 0
    assert value(worker, "finetune_job_duration_seconds_bucket", **succeeded, le="+Inf") == 2
    assert value(worker, "finetune_job_queue_wait_seconds_count", kind="fine_tune") == 2
    # Both jobs waited at least from their creation to the worker's start (whole seconds are recorded).
    assert value(worker, "finetune_job_queue_wait_seconds_sum", kind="fine_tune") >= 2 * (waited - 1.5)
    assert not [name for name in names(worker) if name.startswith("finetune_predict")]  # the worker's own only

    import torch

    gpu = [key for key in worker if key[0] == "finetune_worker_gpu_memory_bytes"]
    assert (gpu == []) == (not torch.cuda.is_available())  # a CPU worker has no GPU memory to report


def test_a_prediction_moves_its_tasks_latency_histogram(monitored):
    stack, _ = monitored
    with stack.client() as c:
        done = [job for job in c.get(JOBS).json()["data"] if job["status"] == "succeeded"]
        if not done:
            pytest.skip("needs the model trained by the test before")
        model = done[0]["fine_tuned_model"]
        task = {"task": "text-classification"}
        before = scrape(f"{stack.url}/metrics")
        answer = c.post(f"/v1/models/{model}/predict", json={"inputs": ["Superb!", "Dreadful."]})
        assert answer.status_code == 200, answer.text
        after = scrape(f"{stack.url}/metrics")
    count = "finetune_predict_latency_seconds_count"
    assert (value(after, count, **task) or 0) - (value(before, count, **task) or 0) == 1
    assert value(after, "finetune_predict_latency_seconds_sum", **task) > (
        value(before, "finetune_predict_latency_seconds_sum", **task) or 0)
    assert value(after, "finetune_predict_latency_seconds_bucket", **task, le="+Inf") == value(after, count, **task)
    assert value(after, "finetune_predict_requests_total", **task) - (
        value(before, "finetune_predict_requests_total", **task) or 0) == 1


# --- the worker's multiprocess files ---

def test_pool_processes_keep_counts_in_a_file_per_slot(tmp_path, monkeypatch):
    """Each job runs in a fresh pool process (forked, as Celery's are) that ends without cleaning up: counts
    carry on in its slot's file, a few files in all, and a slot's next process forgets the GPU memory of
    the one before."""
    import multiprocessing
    import os

    from prometheus_client.multiprocess import MultiProcessCollector

    from app.observability import GPU_MEMORY
    from worker import metrics

    monkeypatch.setenv(metrics.FOLDER_ENV, str(tmp_path))

    def job(slot: int) -> None:
        metrics.start_pool_process(slot)
        metrics.job_claimed("fine_tune", int(time.time()) - 5)
        metrics.job_ended("fine_tune", "text-classification", "succeeded", 12.0)
        GPU_MEMORY.labels("w", "0", "allocated").set(2**30)
        os._exit(0)

    fork = multiprocessing.get_context("fork")
    for slot in (0, 0, 1, 0):
        process = fork.Process(target=job, args=(slot,))
        process.start()
        process.join()
        assert process.exitcode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gauge_livesum_pool0.db", "gauge_livesum_pool1.db",
                                                          "histogram_pool0.db", "histogram_pool1.db"]

    def collected() -> dict:
        return {(sample.name, frozenset(sample.labels.items())): sample.value
                for family in MultiProcessCollector(None, str(tmp_path)).collect() for sample in family.samples}

    samples = collected()
    succeeded = {"kind": "fine_tune", "task": "text-classification", "outcome": "succeeded"}
    assert value(samples, "finetune_job_duration_seconds_count", **succeeded) == 4
    assert value(samples, "finetune_job_duration_seconds_sum", **succeeded) == 48
    assert value(samples, "finetune_job_queue_wait_seconds_count", kind="fine_tune") == 4
    assert value(samples, "finetune_worker_gpu_memory_bytes", worker="w", device="0", kind="allocated") == 2 * 2**30

    starting = fork.Process(target=metrics.start_pool_process, args=(1,))  # slot 1's next process starts
    starting.start()
    starting.join()
    assert value(collected(), "finetune_worker_gpu_memory_bytes", worker="w", device="0", kind="allocated") == 2**30


# --- the Grafana dashboard ---

def exposed_names() -> set[str]:
    """Every sample name the service's metrics expose (a counter's _total, a histogram's _bucket…)."""
    from prometheus_client.metrics import MetricWrapperBase

    from app import observability

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {metric._name + suffix for metric in vars(observability).values() if isinstance(metric, MetricWrapperBase)
            for suffix in suffixes[metric._type]}


def test_the_dashboard_charts_what_the_service_exposes():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert {"name": "datasource", "type": "datasource"}.items() <= dashboard["templating"]["list"][0].items()
    charts = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    exprs = [target["expr"] for panel in charts for target in panel["targets"]]
    assert all(panel["datasource"]["uid"] == "${datasource}" and panel["targets"] for panel in charts)

    used = {name for expr in exprs for name in re.findall(r"\bfinetune_[a-z_]+", expr)}
    assert used <= exposed_names(), used - exposed_names()  # a renamed metric breaks this, not the chart

    def charted(pattern: str) -> bool:
        return any(re.search(pattern, expr) for expr in exprs)

    assert charted(r"max by \(queue\) \(finetune_queue_depth\)")
    assert charted(r"max by \(status\) \(finetune_jobs\{")
    assert charted(r"histogram_quantile\(0\.5, sum by \(le, task\) \(increase\(finetune_job_duration_seconds_bucket")
    assert charted(r"histogram_quantile\(0\.99, sum by \(le\) \(increase\(finetune_job_queue_wait_seconds_bucket")
    for quantile in ("0.5", "0.99"):
        assert charted(rf"histogram_quantile\({quantile}, sum by \(le, task\) "
                       r"\(rate\(finetune_predict_latency_seconds_bucket")
    assert charted(r'finetune_worker_gpu_memory_bytes\{kind="allocated"\}') and charted(r"by \(worker, device\)")
    for existing in ("finetune_predict_requests_total", "finetune_predict_inputs_total",
                     "finetune_predict_batches_total", "finetune_predict_batch_inputs_bucket",
                     "finetune_model_cache_bytes", "finetune_model_cache_models"):
        assert charted(existing), existing
