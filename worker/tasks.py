"""The only Celery-aware code: claim the job row, run the pure training core, record the outcome."""

from __future__ import annotations

import os
import shutil
import socket
import time
import traceback
from typing import Any

from celery.utils.log import get_task_logger
from sqlalchemy import func, select

from app.config import get_settings
from app.db import transitions as st
from app.db.engine import session_scope
from app.db.events import append_event
from app.db.models import File, FineTunedModel, Job, now
from app.ids import short_job_id
from app.ml.base_models import list_base_models
from app.storage import get_storage
from worker.celery_app import celery_app

log = get_task_logger(__name__)


def fine_tuned_model_id(job: Job) -> str:
    return f"ft:{job.model}:{job.suffix or ''}:{short_job_id(job.id)}"


class DbReporter:
    """Progress, events and the cancel flag, through SQL. Also renews the job's lease."""

    def __init__(self, job_id: str, lease_seconds: int):
        self.job_id, self.lease_seconds = job_id, lease_seconds

    def progress(self, progress: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
        with session_scope() as s:
            job = s.get(Job, self.job_id)
            job.progress = progress
            job.lease_expires_at = now() + self.lease_seconds
            if progress.get("eta_seconds") is not None:
                job.estimated_finish = now() + int(progress["eta_seconds"])
            if metrics:
                job.metrics = {**(job.metrics or {}), **metrics}

    def event(self, message: str, *, level: str = "info", type: str = "message",
              data: dict[str, Any] | None = None) -> None:
        with session_scope() as s:
            append_event(s, self.job_id, message, level=level, type=type, data=data)

    def should_stop(self) -> bool:
        with session_scope() as s:
            return bool(s.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))


def _claim(job_id: str, worker_id: str, lease_seconds: int) -> Job | None:
    with session_scope() as s:
        claimed = st.move(s, job_id, st.QUEUED, st.RUNNING, attempt=Job.attempt + 1, worker_id=worker_id,
                          lease_expires_at=now() + lease_seconds,
                          started_at=func.coalesce(Job.started_at, now()))
        if not claimed:
            return None
        job = s.get(Job, job_id)
        append_event(s, job_id, f"Job started on {worker_id} (attempt {job.attempt}).",
                     data={"status": st.RUNNING, "attempt": job.attempt})
        return job


def _finish(job_id: str, to: str, message: str, level: str = "info", **fields: Any) -> None:
    with session_scope() as s:
        if st.move(s, job_id, st.RUNNING, to, finished_at=now(), lease_expires_at=None, **fields):
            append_event(s, job_id, message, level=level, data={"status": to})


@celery_app.task(name="worker.tasks.run_job")
def run_job(job_id: str) -> str:
    settings = get_settings()
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    job = _claim(job_id, worker_id, settings.lease_seconds)
    if job is None:
        log.info("job %s is not queued any more; nothing to do", job_id)
        return "skipped"
    try:
        return _run_claimed(job, settings)
    except Exception as exc:  # any failure ends as a failed job with an error a user can read
        from worker.training import TrainingError

        if isinstance(exc, TrainingError):
            error = {"code": exc.code, "message": exc.message}
        else:
            log.error("job %s failed:\n%s", job_id, traceback.format_exc())
            error = {"code": "training_failed",
                     "message": f"Training failed: {type(exc).__name__}: {str(exc)[:500]}"}
        _finish(job_id, st.FAILED, f"Job failed: {error['message']}", level="error", error=error)
        return "failed"


def _run_claimed(job: Job, settings) -> str:
    from worker.training import DataFile, TrainingError, TrainingSpec, resolve_precision, train

    storage = get_storage()
    base = list_base_models(settings).get(job.model)
    if base is None or not base.usable:
        raise TrainingError("model_not_found", f"Base model '{job.model}' is no longer offered by this deployment.")
    with session_scope() as s:
        files = {f.id: f for f in s.scalars(select(File).where(File.id.in_(
            [job.training_file] + ([job.validation_file] if job.validation_file else []))))}
    if job.training_file not in files:
        raise TrainingError("file_not_found", f"Training file {job.training_file} was deleted before training.")

    def data(file_id: str | None) -> DataFile | None:
        if not file_id:
            return None
        record = files[file_id]
        return DataFile(storage.local_path(record.storage_key), record.format)

    # Precision depends on the device, known only here: the job shows what this worker will use.
    hyperparameters = {**job.hyperparameters,
                       "precision": resolve_precision(job.hyperparameters.get("precision", "auto"))}
    with session_scope() as s:
        row = s.get(Job, job.id)
        row.hyperparameters = hyperparameters
        row.method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    spec = TrainingSpec(task=job.task, base_model_path=str(base.path), column_mapping=job.column_mapping,
                        plan=job.training_plan, hyperparameters=hyperparameters, seed=job.seed)
    work = settings.data_dir.resolve() / "work" / job.id
    output = work / "model"
    shutil.rmtree(work, ignore_errors=True)
    reporter = DbReporter(job.id, settings.lease_seconds)
    started = time.monotonic()
    try:
        outcome = train(spec, data(job.training_file), data(job.validation_file), output, reporter,
                        work_dir=work, progress_interval_s=settings.progress_interval_s)
        if outcome.stopped:
            _finish(job.id, st.CANCELLED, "Job cancelled.", trained_tokens=outcome.trained_tokens)
            return "cancelled"
        model_id = fine_tuned_model_id(job)
        key = f"models/{job.project_id}/{job.id}"
        size = storage.import_dir(key, output)
        with session_scope() as s:
            s.add(FineTunedModel(id=model_id, project_id=job.project_id, job_id=job.id, base_model=job.model,
                                 task=job.task, storage_key=key, bytes=size))
            s.flush()
            latest = s.get(Job, job.id).progress or {}
            final_progress = {**latest, "step": outcome.steps, "total_steps": outcome.steps, "percent": 100.0,
                              "eta_seconds": 0}
            if not st.move(s, job.id, st.RUNNING, st.SUCCEEDED, finished_at=now(), lease_expires_at=None,
                           fine_tuned_model=model_id, trained_tokens=outcome.trained_tokens,
                           metrics=outcome.metrics, progress=final_progress):
                raise TrainingError("job_state_changed", "The job was moved by someone else while it trained.")
            append_event(s, job.id, f"Training finished in {time.monotonic() - started:.0f}s; model {model_id} "
                                    "is ready.", data={"status": st.SUCCEEDED, "metrics": outcome.metrics})
        return "succeeded"
    finally:
        shutil.rmtree(work, ignore_errors=True)
