"""Prometheus metrics: the serving path and the operator's view of jobs (docs/monitoring.md).

Counters are per process; Prometheus sums the replicas. Labels are tasks, statuses and queues, never
model ids or projects: a fine-tuned model's id names its project's suffix and job, and /metrics is
scraped without an API key.

Two processes observe. The API (``GET /metrics``) counts predictions and, at each scrape, reads the
jobs by status and the queue depths from the database. A worker observes what only it sees — how long
a job waited and ran, its GPU memory — and serves it on its own port (FT_WORKER_METRICS_PORT,
worker/metrics.py); those series are not registered here, so the API never exports them empty."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# --- serving (API processes) ---
PREDICT_REQUESTS = Counter("finetune_predict_requests_total", "Prediction requests", ["task"])
PREDICT_INPUTS = Counter("finetune_predict_inputs_total", "Inputs predicted", ["task"])
PREDICT_BATCHES = Counter("finetune_predict_batches_total", "Batched forwards run", ["task"])
BATCH_INPUTS = Histogram("finetune_predict_batch_inputs", "Inputs per batched forward",
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
# From joining the model's batch queue to the answer: waiting for the model, batching, the forward.
PREDICT_LATENCY = Histogram("finetune_predict_latency_seconds", "Prediction and completion latency, per request",
                            ["task"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
CACHE_BYTES = Gauge("finetune_model_cache_bytes", "Memory held by loaded prediction models")
CACHE_MODELS = Gauge("finetune_model_cache_models", "Fine-tuned models loaded for prediction")
CACHE_ADAPTERS = Gauge("finetune_model_cache_adapters", "LoRA models loaded for prediction (on shared bases)")
CACHE_BASES = Gauge("finetune_model_cache_shared_bases", "Base models loaded once and shared by LoRA adapters")

# --- jobs, read from the database when /metrics is scraped (API processes that run jobs' routes) ---
JOBS = Gauge("finetune_jobs", "Jobs by kind (fine_tune, evaluation) and status", ["kind", "status"])
QUEUE_DEPTH = Gauge("finetune_queue_depth", "Jobs queued per worker queue (gpu, gpu-x2…)", ["queue"])

# --- workers (served by each worker on FT_WORKER_METRICS_PORT; registry=None: not in the API's /metrics) ---
_JOB_SECONDS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
JOB_DURATION = Histogram("finetune_job_duration_seconds", "How long a worker ran a job, from its claim to the "
                         "outcome (one observation per run: a paused job that resumes runs again)",
                         ["kind", "task", "outcome"], buckets=_JOB_SECONDS, registry=None)
QUEUE_WAIT = Histogram("finetune_job_queue_wait_seconds", "How long a job was queued before a worker claimed it "
                       "(whole seconds)", ["kind"], buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200,
                                                             21600, 86400), registry=None)
# Per process and device, summed over the live processes of the worker (several for a multi-device job).
GPU_MEMORY = Gauge("finetune_worker_gpu_memory_bytes", "GPU memory of the worker's training processes (torch's "
                   "allocator: allocated, reserved, peak allocated)", ["worker", "device", "kind"],
                   multiprocess_mode="livesum", registry=None)
WORKER_SERIES = frozenset({"finetune_job_duration_seconds", "finetune_job_queue_wait_seconds",
                           "finetune_worker_gpu_memory_bytes"})


_queues_seen: set[str] = set()


def record_job_counts(by_status: dict[tuple[str, str], int], queue_depths: dict[str, int]) -> None:
    """The database's answer at this scrape: every (kind, status) given, zeros included, and every queue
    this process has seen, emptied ones at 0 (a series that vanished would read as "unknown", not empty)."""
    for (kind, status), count in by_status.items():
        JOBS.labels(kind, status).set(count)
    _queues_seen.update(queue_depths)
    for queue in _queues_seen:
        QUEUE_DEPTH.labels(queue).set(queue_depths.get(queue, 0))
