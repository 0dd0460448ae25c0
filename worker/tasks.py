"""The only Celery-aware code: claim the job row, run the pure training core, record the outcome."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import traceback
from functools import partial
from typing import Any

from celery.utils.log import get_task_logger
from sqlalchemy import func, select

from app.config import Settings, get_settings
from app.data.limits import ScanLimits
from app.db import transitions as st
from app.db.engine import session_scope
from app.db.events import append_event
from app.db.models import Checkpoint, File, FineTunedModel, Job, now
from app.errors import redact_paths
from app.ids import new_id, short_job_id
from app.ml.base_models import list_base_models
from app.storage import get_storage
from app.schemas.jobs import supervised_method
from app.services.lifecycle import transition
from app.services.results import write_metrics_csv
from app.db.scheduling import next_job_query
from worker.celery_app import celery_app

log = get_task_logger(__name__)


def fine_tuned_model_id(job: Job) -> str:
    return f"ft:{job.model}:{job.suffix or ''}:{short_job_id(job.id)}"


class DbReporter:
    """Progress, events, checkpoints and the cancel/pause flags, through SQL."""

    def __init__(self, job: Job, checkpoint_prefix: str):
        self.job_id, self.project_id = job.id, job.project_id
        self.model_id = fine_tuned_model_id(job)
        self.checkpoint_prefix = checkpoint_prefix

    def progress(self, progress: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
        with session_scope() as s:
            job = s.get(Job, self.job_id)
            job.progress = progress
            if progress.get("eta_seconds") is not None:
                job.estimated_finish = now() + int(progress["eta_seconds"])
            if metrics:
                job.metrics = {**(job.metrics or {}), **metrics}

    def event(self, message: str, *, level: str = "info", type: str = "message",
              data: dict[str, Any] | None = None) -> None:
        with session_scope() as s:
            append_event(s, self.job_id, message, level=level, type=type, data=data)

    def should_stop(self) -> str | None:
        with session_scope() as s:
            cancel, pause = s.execute(select(Job.cancel_requested, Job.pause_requested)
                                      .where(Job.id == self.job_id)).one()
        return "cancel" if cancel else "pause" if pause else None

    def hyperparameters(self, resolved: dict[str, Any]) -> None:
        with session_scope() as s:
            job = s.get(Job, self.job_id)
            job.hyperparameters = resolved
            job.method = supervised_method(resolved)

    def checkpoint(self, step: int, epoch: float, path: str, metrics: dict[str, Any]) -> None:
        storage = get_storage()
        # Stored (trainer_state.json last: it marks a checkpoint complete) before anyone is told of it.
        storage.push(self.checkpoint_prefix, f"checkpoint-{step}", last="trainer_state.json")
        with session_scope() as s:
            # The Trainer rotated old checkpoints away before telling us: forget those too.
            for old in s.scalars(select(Checkpoint).where(Checkpoint.job_id == self.job_id)):
                if not storage.exists(old.storage_key):
                    s.delete(old)
            if s.scalar(select(Checkpoint.id).where(Checkpoint.job_id == self.job_id, Checkpoint.step == step)):
                return  # the same step saved again after a resume
            model_id = f"{self.model_id}:ckpt-step-{step}"
            s.add(Checkpoint(id=new_id("ftckpt"), job_id=self.job_id, project_id=self.project_id, step=step,
                             epoch=epoch, metrics={"step": step, **metrics}, model_id=model_id,
                             storage_key=f"{self.checkpoint_prefix}/checkpoint-{step}"))
            append_event(s, self.job_id, f"Checkpoint saved at step {step}; usable for predictions as {model_id}.",
                         data={"step": step, "fine_tuned_model_checkpoint": model_id})


class Heartbeat:
    """Renews the job's lease from a thread, so that long evaluations or data loading never look
    like a dead worker, and a dead worker's lease runs out quickly."""

    def __init__(self, job_id: str, lease_seconds: int):
        self.job_id, self.lease_seconds = job_id, lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(max(0.5, self.lease_seconds / 4)):
            try:
                with session_scope() as s:
                    s.execute(Job.__table__.update().where(Job.id == self.job_id, Job.status == st.RUNNING)
                              .values(lease_expires_at=now() + self.lease_seconds))
            except Exception:  # a missed beat is not fatal; the lease has slack for three more
                log.exception("heartbeat for %s failed", self.job_id)


def _claim_next(message_job_id: str, worker_id: str, lease_seconds: int) -> Job | None:
    """The queued job this worker should run now, claimed; None when there is none.

    A message is a turn, not an order: it says "a job of this many devices was queued", and the
    scheduler decides which one runs (app.db.scheduling). So a project that queued a hundred
    jobs first does not make another project's first job wait behind all of them."""
    with session_scope() as s:
        devices = s.scalar(select(Job.devices).where(Job.id == message_job_id))
    if devices is None:
        return None
    for _ in range(10):  # another worker may claim the same job first: then pick again
        with session_scope() as s:
            job_id = s.scalar(next_job_query(devices))
            if job_id is None:
                return None
            claimed = st.move(s, job_id, st.QUEUED, st.RUNNING, attempt=Job.attempt + 1, worker_id=worker_id,
                              lease_expires_at=now() + lease_seconds, started_at=func.coalesce(Job.started_at, now()))
            if not claimed:
                continue
            job = s.get(Job, job_id)
            append_event(s, job_id, f"Job started on {worker_id} (attempt {job.attempt}).",
                         data={"status": st.RUNNING, "attempt": job.attempt})
            return job
    return None


def _finish(job_id: str, to: str, message: str, level: str = "info", **fields: Any) -> None:
    with session_scope() as s:
        transition(s, job_id, st.RUNNING, to, message, level=level, **fields)


@celery_app.task(name="worker.tasks.run_job")
def run_job(job_id: str) -> str:
    settings = get_settings()
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    job = _claim_next(job_id, worker_id, settings.lease_seconds)
    if job is None:
        log.info("no queued job for the turn of %s; nothing to do", job_id)
        return "skipped"
    try:
        with Heartbeat(job.id, settings.lease_seconds):
            return _run_claimed(job, settings)
    except Exception as exc:  # any failure ends as a failed job with an error a user can read
        from worker.training import TrainingError

        if isinstance(exc, TrainingError):
            error = {"code": exc.code, "message": redact_paths(exc.message)}
        else:
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            error = {"code": "training_failed",
                     "message": redact_paths(f"Training failed: {type(exc).__name__}: {str(exc)[:500]}")}
        _finish(job.id, st.FAILED, f"Job failed: {error['message']}", level="error", error=error)
        return "failed"


def _run_claimed(job: Job, settings: Settings) -> str:
    from worker.launcher import launch
    from worker.training import DataFile, TrainingError, TrainingSpec, latest_checkpoint, train

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
        if not storage.exists(record.storage_key):
            raise TrainingError("file_not_found", f"File {file_id} is missing from storage; upload it again and "
                                "create a new job.")
        return DataFile(storage.local_path(record.storage_key), record.format, sha256=record.sha256,
                        limits=ScanLimits.from_settings(settings))

    checkpoint_prefix = f"checkpoints/{job.project_id}/{job.id}"
    # What an earlier attempt stored, maybe on another machine: the next attempt resumes from it.
    checkpoint_dir = storage.pull(checkpoint_prefix)
    spec = TrainingSpec(task=job.task, base_model_path=str(base.path), base_model=job.model,
                        column_mapping=job.column_mapping,
                        plan=job.training_plan, hyperparameters=job.hyperparameters, seed=job.seed,
                        checkpoint_dir=checkpoint_dir, keep_checkpoints=settings.keep_checkpoints,
                        resume_from=latest_checkpoint(checkpoint_dir),
                        token_cache_dir=settings.data_dir.resolve() / "cache" / "tokenized"
                        if settings.token_cache_mb else None, token_cache_bytes=settings.token_cache_mb * 2**20,
                        # Each project's tokenized data apart: a hit must never tell one project that
                        # another trained on the same file.
                        token_cache_namespace=job.project_id,
                        callbacks=settings.trainer_callbacks)
    work = settings.data_dir.resolve() / "work" / job.id
    output = work / "model"
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    try:
        run = train if job.devices == 1 else partial(launch, devices=job.devices)
        outcome = run(spec, data(job.training_file), data(job.validation_file), output,
                      DbReporter(job, checkpoint_prefix), work_dir=work, progress_interval_s=settings.progress_interval_s)
        if outcome.stopped == "cancel":
            _finish(job.id, st.CANCELLED, "Job cancelled.", trained_tokens=outcome.trained_tokens)
            return "cancelled"
        if outcome.stopped == "pause":
            _finish(job.id, st.PAUSED, f"Job paused at step {outcome.steps}; resume it with POST "
                                       f"/v1/fine_tuning/jobs/{job.id}/resume.", pause_requested=False)
            return "paused"
        return _register_model(job, outcome, output, storage, time.monotonic() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        storage.release(checkpoint_prefix)  # stored already: an object store's cache needs no copy


def _register_model(job: Job, outcome, output, storage, seconds: float) -> str:
    from worker.training import TrainingError

    model_id = fine_tuned_model_id(job)
    key = f"models/{job.project_id}/{job.id}"
    size = storage.import_dir(key, output)
    with session_scope() as s:
        s.add(FineTunedModel(id=model_id, project_id=job.project_id, job_id=job.id, base_model=job.model,
                             task=job.task, storage_key=key, bytes=size))
        s.flush()
        row = s.get(Job, job.id)
        results = write_metrics_csv(s, storage, row)
        final_progress = {**(row.progress or {}), "step": outcome.steps, "total_steps": outcome.steps,
                          "percent": 100.0, "eta_seconds": 0}
        hyperparameters = outcome.hyperparameters  # as trained: an out-of-memory retry may have split batches
        if not transition(s, job.id, st.RUNNING, st.SUCCEEDED,
                          f"Training finished in {seconds:.0f}s; model {model_id} is ready.",
                          data={"metrics": outcome.metrics}, fine_tuned_model=model_id,
                          trained_tokens=outcome.trained_tokens, metrics=outcome.metrics, progress=final_progress,
                          result_files=[results.id], hyperparameters=hyperparameters,
                          method=supervised_method(hyperparameters)):
            raise TrainingError("job_state_changed", "The job was moved by someone else while it trained.")
    return "succeeded"
