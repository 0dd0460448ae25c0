"""ORM tables. SQL is the truth about jobs: Celery only ever carries a job id.

Timestamps are integer Unix seconds, as the OpenAI API returns them.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> int:
    return int(time.time())


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    # An operator's per-project overrides of the FT_QUOTA_* defaults, e.g. {"active_jobs": 200}.
    quotas: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    # Only a SHA-256 of the key is stored; the key itself is shown once, when it is created.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    display_prefix: Mapped[str] = mapped_column(String(16))
    # The key's last four characters, so people can tell their keys apart in a listing.
    last4: Mapped[str] = mapped_column(String(4), default="")
    name: Mapped[str] = mapped_column(String(200), default="")
    # "admin" (everything, keys included), "train" (files, jobs, models, webhooks) or "predict"
    # (predictions, completions and reading models).
    scope: Mapped[str] = mapped_column(String(16), default="admin")
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class File(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(500))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    columns: Mapped[list[Any]] = mapped_column(default=list)
    # Per-column statistics gathered while the upload streamed past; jobs are validated against it.
    profile: Mapped[dict[str, Any]] = mapped_column(default=dict)
    detected_task: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detected_column_mapping: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    validation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(32))
    storage_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now, index=True)


class Job(Base):
    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (UniqueConstraint("project_id", "idempotency_key", name="uq_jobs_idempotency"),
                      Index("ix_fine_tuning_jobs_status_devices", "status", "devices"),
                      Index("ix_fine_tuning_jobs_project_kind", "project_id", "kind"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    # "fine_tune", or "evaluation" (POST /v1/evaluations): both are queued, scheduled, leased, cancelled
    # and reported the same way; only what the worker runs differs.
    kind: Mapped[str] = mapped_column(String(16), default="fine_tune")
    # The model the job starts from: a base model, or a fine-tuned model or checkpoint of the project
    # (then ``base_model`` is the base its weights go back to).
    model: Mapped[str] = mapped_column(String(500))
    base_model: Mapped[str | None] = mapped_column(String(500), nullable=True)
    task: Mapped[str] = mapped_column(String(64))
    # Plain ids, not foreign keys: a finished job keeps naming its files after they are deleted.
    training_file: Mapped[str] = mapped_column(String(64), index=True)
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    # Experiment trackers the training logs to, as the client asked (OpenAI's ``integrations``).
    integrations: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    method: Mapped[dict[str, Any]] = mapped_column(default=dict)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # GPUs (processes on CPU) the job trains on: which workers may take it (their queue), and which
    # queued jobs a worker's scheduler chooses from.
    devices: Mapped[int] = mapped_column(Integer, default=1)
    column_mapping: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Facts the worker needs that were derived during validation (label names, target scaling).
    training_plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(32), index=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(700), nullable=True)
    result_files: Mapped[list[Any]] = mapped_column(default=list)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The evaluation before the first step (app.jobs.improvement): the "before" of "before → after".
    baseline_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Times a worker was lost mid-job (lease expired); past FT_MAX_ATTEMPTS the job fails.
    interruptions: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    lease_expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Counter behind the per-job event sequence; bumped atomically with UPDATE … RETURNING.
    event_seq: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now, index=True)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class JobEvent(Base):
    __tablename__ = "fine_tuning_job_events"
    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_job_events_seq"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class FineTunedModel(Base):
    __tablename__ = "fine_tuned_models"

    id: Mapped[str] = mapped_column(String(700), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id"), index=True)
    base_model: Mapped[str] = mapped_column(String(500))
    # The model it was trained from when that was not the base: a fine-tuned model or checkpoint.
    parent: Mapped[str | None] = mapped_column(String(700), nullable=True)
    task: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(500))
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class Checkpoint(Base):
    __tablename__ = "fine_tuning_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_checkpoints_step"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float] = mapped_column(default=0.0)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model_id: Mapped[str] = mapped_column(String(700), index=True)
    storage_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    # Kept in clear: it signs every delivery (HMAC), so it must be readable by the dispatcher.
    secret: Mapped[str] = mapped_column(String(100))
    events: Mapped[list[Any]] = mapped_column(default=list)
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class WebhookDelivery(Base):
    """The outbox: written in the same transaction as the job's terminal state, delivered later."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the webhook-id header (msg_…)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    event_type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(default=0.0, index=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
