"""One Settings object for the API, the worker and the CLI.

Every value comes from the environment with the ``FT_`` prefix (or a ``.env`` file), so the embedded
default and a production deployment differ only in environment variables, never in code.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FT_", env_file=".env", extra="ignore")

    # Where the embedded deployment keeps its SQLite database, broker, uploaded files and models.
    data_dir: Path = Path("data")

    # Empty means "embedded default inside data_dir": SQLite database, SQLite-backed Celery broker.
    database_url: str = ""
    broker_url: str = ""
    storage_dir: Path | None = None
    # An fsspec URL (s3://bucket/prefix, gs://…, file:///shared/…) for storage shared by machines; the
    # storage folder is then this machine's cache of it. Empty: the storage folder is the storage.
    storage_url: str = ""
    # With storage_url: the disk this machine's cache of the store may use (least recently used
    # uploads, models and checkpoints go first; 0: no limit).
    storage_cache_mb: int = Field(default=20480, ge=0)

    # Base models on offer: every sub-folder (one or two levels deep, e.g. ``org/name``) holding a
    # config.json and safetensors weights. The bundled MiniLM is added unless disabled.
    base_models_dir: Path | None = None
    bundled_models: bool = True

    # A key created (hashed) on first start for the project ``default``, so scripts know a valid key.
    bootstrap_api_key: str = ""

    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    preview_max_rows: int = 100

    # Celery queue that GPU workers consume; the API only ever enqueues job ids onto it. Jobs that ask
    # for N > 1 devices go to "<gpu_queue>-xN", which only workers offering at least N devices consume.
    gpu_queue: str = "gpu"
    # Devices a worker offers one job (data-parallel processes): by default the GPUs it sees, or on a
    # machine without one, up to 8 CPU processes.
    worker_devices: int | None = Field(default=None, ge=1, le=64)

    # Inference: how many fine-tuned models stay loaded, and the batch size used for a list of inputs.
    # Memory the prediction model cache may hold (weights and buffers); least recently used go first.
    model_cache_mb: int = 4096
    predict_batch_size: int = 64
    # Dynamic batching: concurrent requests to one model are coalesced up to this many inputs, waiting
    # at most this long for company once the model is free (a busy model batches without waiting).
    predict_max_batch: int = 64
    predict_max_wait_ms: float = 0.0
    # "all": the whole API; "predictions": only predictions, completions, models and health, no
    # background threads — for serving replicas on GPU machines, apart from the control plane.
    serve_mode: Literal["all", "predictions"] = "all"
    predict_max_inputs: int = 1024

    # Keep-alive comments on event streams, so proxies do not close a quiet stream.
    sse_ping_s: int = 15
    # Followers of a job's events are woken by the database: PostgreSQL LISTEN/NOTIFY, or on SQLite a
    # look at PRAGMA data_version (a counter, no table read) this often. Each API process also re-reads
    # the followed jobs' sequence numbers every event_fallback_s (one query for all its streams), so a
    # notification lost with a dropped connection only delays the events.
    event_sqlite_poll_s: float = Field(default=0.025, gt=0, le=5)
    event_fallback_s: float = Field(default=10.0, gt=0)
    # How often the training callback writes progress to SQL (seconds).
    progress_interval_s: float = 2.0
    # A running job's lease; the worker renews it every lease/4 seconds while it is alive.
    lease_seconds: int = 120
    # Losses of a job's worker tolerated before the job fails; how often the reaper looks; how long a
    # queued job waits before its message is sent again (covers a broker restarted without persistence).
    max_attempts: int = 3
    reaper_interval_s: float = 10.0
    requeue_after_s: int = 300
    # Run the reaper (and webhook delivery) in this API process.
    housekeeping: bool = True
    # Checkpoints kept per job (the newest ones; older ones are deleted as new ones are written).
    keep_checkpoints: int = 3
    # Disk a worker may use to keep tokenized datasets for retries and repeated jobs (0 turns it off).
    token_cache_mb: int = Field(default=10240, ge=0)
    # Extra transformers TrainerCallback classes every job trains with, e.g. an experiment tracker's
    # logger: a JSON list of "module:Class" import paths importable by the workers.
    trainer_callbacks: list[Annotated[str, StringConstraints(pattern=r"^[\w.]+:\w+$")]] = []

    # --- experiment trackers and monitoring (docs/monitoring.md) ---
    # Trackers jobs may log to (`integrations` on job create): "wandb", "mlflow". The API refuses a job
    # asking for one not listed; the workers need the package (extra "trackers") and the credentials in
    # their environment (WANDB_API_KEY, or WANDB_MODE=offline with WANDB_DIR). Comma-separated or JSON.
    integrations: Annotated[list[Literal["wandb", "mlflow"]], NoDecode] = []
    # Where MLflow runs go (http(s)://server, databricks, sqlite:///…): the operator's, never a client's.
    mlflow_tracking_uri: str = ""
    # The worker's Prometheus endpoint (job durations, queue waits, GPU memory): 0 turns it off. One port
    # per worker process on a machine.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    # The `worker` label of those series; default: the Celery node name (gpu-worker-<pid>@<host>).
    worker_name: str = ""

    # --- webhooks ---
    # Deliver the webhook outbox from a thread in each API process (claims are atomic across replicas).
    webhooks_dispatch: bool = True
    webhook_poll_s: float = Field(default=1.0, gt=0)
    # Retry wait after the n-th failed attempt: webhook_backoff_s * 2**(n-1), capped at one hour.
    webhook_backoff_s: float = Field(default=5.0, ge=0)
    webhook_max_attempts: int = Field(default=8, ge=1)

    # Networks webhook URLs may reach although they are not public (CIDRs, e.g. ["10.0.0.0/8"]): by default
    # loopback, private, link-local, multicast and reserved addresses are refused, when an endpoint is
    # registered and again when each delivery connects (so a DNS answer that changes cannot redirect it).
    # A JSON list or comma-separated: FT_WEBHOOK_ALLOWED_NETWORKS=10.0.0.0/8,fd00::/8
    webhook_allowed_networks: Annotated[list[str], NoDecode] = []
    # A delivery's whole time, connect to last byte; deliveries in flight at once, in all and per project.
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_concurrency: int = Field(default=16, ge=1)
    webhook_project_concurrency: int = Field(default=2, ge=1)

    # --- bounds on what one request may ask: each is checked before the work it would cause ---
    # Bodies of every route but uploads (JSON), enforced while reading; uploads have max_upload_bytes.
    max_body_bytes: int = Field(default=4 * 2**20, ge=1024)
    # One record of an upload (a CSV/TSV record, a JSONL line, a Parquet row) and one value in it.
    max_row_bytes: int = Field(default=2**20, ge=1024)
    max_cell_bytes: int = Field(default=512 * 1024, ge=256)
    # Lists and objects inside objects, in an uploaded record (request bodies: Python's JSON parser's own limit).
    max_nesting_depth: int = Field(default=32, ge=2, le=200)
    # Chat templates (the job's or a base model's): the time one rendering may take and what it may produce.
    template_timeout_s: float = Field(default=1.0, gt=0)
    template_max_chars: int = Field(default=4_000_000, ge=1000)
    # /v1/completions prompts and /v1/chat/completions messages per request.
    max_prompts: int = Field(default=32, ge=1)
    max_messages: int = Field(default=256, ge=1)

    # --- quotas per project: these defaults, or an operator's override (`finetune quota set`) ---
    quota_active_jobs: int = Field(default=50, ge=0)  # queued + running + paused jobs
    quota_storage_bytes: int = Field(default=100 * 2**30, ge=0)  # uploaded files, result files and models
    quota_files: int = Field(default=1000, ge=0)
    quota_webhook_endpoints: int = Field(default=10, ge=0)
    quota_event_streams: int = Field(default=20, ge=0)  # open job-event streams, per API process
    quota_api_keys: int = Field(default=100, ge=1)  # active (unrevoked, unexpired) keys
    # Prediction and completion requests per second (token bucket per project and API process; burst 2×).
    # 0: unlimited.
    quota_requests_per_s: float = Field(default=100.0, ge=0)

    # --- authentication ---
    # How long an API process remembers a key: a revoked key stops working everywhere within this time
    # (at once in the process that revoked it).
    auth_cache_s: float = Field(default=10.0, ge=0)
    # When set, GET /metrics asks for "Authorization: Bearer <this token>".
    metrics_token: str = ""

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # API processes (uvicorn workers). Unset: `finetune api` runs min(CPU cores, 4) on PostgreSQL and 1 on
    # SQLite; `finetune serve` (the embedded all-in-one) and serving replicas (FT_SERVE_MODE=predictions)
    # run 1. Per process: the key memory, open-stream and request-rate quotas, loaded models (docs/architecture.md).
    api_workers: int | None = Field(default=None, ge=1, le=64)
    # uvicorn's line per request. Off by default, as gunicorn's is: writing it cost 6% of a job GET's CPU,
    # and a load balancer's log or /metrics usually says the same. FT_ACCESS_LOG=true turns it on.
    access_log: bool = False

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{_absolute(self.data_dir / 'finetune.sqlite')}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{_absolute(self.data_dir / 'broker.sqlite')}"

    @field_validator("storage_url")
    @classmethod
    def _storage_url_is_usable(cls, url: str) -> str:
        """An unknown protocol, or one whose library is not installed, stops the process at start-up
        with this message rather than failing every request that touches storage."""
        if url:
            import fsspec

            protocol = url.split("://", 1)[0] if "://" in url else "file"
            try:
                fsspec.get_filesystem_class(protocol)
            except (ValueError, ImportError) as exc:
                raise ValueError(f"cannot use {url!r}: {exc}. Use s3://bucket/prefix (s3fs installed), "
                                 "gs://… (gcsfs) or file:///path.") from None
        return url

    @field_validator("webhook_allowed_networks", "integrations", mode="before")
    @classmethod
    def _list_from_text(cls, value):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _mlflow_has_somewhere_to_go(self):
        """An operator who enables MLflow says where its runs go; otherwise every MLflow job would write
        into a folder of whichever worker ran it."""
        if "mlflow" in self.integrations and not self.mlflow_tracking_uri:
            raise ValueError("FT_INTEGRATIONS lists mlflow but FT_MLFLOW_TRACKING_URI is empty: set it to the MLflow "
                             "server (http://mlflow:5000) or database (sqlite:///path/mlflow.db) runs go to.")
        return self

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _allowed_networks_are_cidrs(cls, cidrs: list[str]) -> list[str]:
        """A mistyped network stops the process at start-up, naming it, rather than leaving webhooks
        refused that operators meant to allow. Host bits must be clear: "10.1.2.3/8" could mean that one
        address or all of 10/8."""
        import ipaddress

        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr.strip(), strict=True)
            except ValueError as exc:
                raise ValueError(f"FT_WEBHOOK_ALLOWED_NETWORKS: {cidr!r} is not a network in CIDR form ({exc}). "
                                 'Give networks such as 10.0.0.0/8,fd00::/8 (or a JSON list), each written '
                                 "with its network address (10.0.0.0/8, not 10.1.2.3/8).") from None
        return [cidr.strip() for cidr in cidrs]

    @property
    def resolved_storage_dir(self) -> Path:
        return (self.storage_dir or self.data_dir / "storage").resolve()

    @property
    def resolved_base_models_dir(self) -> Path:
        return (self.base_models_dir or self.data_dir / "base_models").resolve()


@lru_cache(maxsize=64)
def _absolute(path: Path) -> Path:
    """Path.resolve() walks the path with a system call per part; every database read asks for the
    engine's URL, and resolving it each time was a tenth of a job GET's CPU."""
    return path.resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
