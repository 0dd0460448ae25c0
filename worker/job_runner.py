"""The only Celery-aware code: take a turn (claim the job the scheduler names), run the pure training core,
record the outcome. What a job is — its names, states, claims and results — is the job domain's
(app.jobs); how it trains is the training core's (worker/training.py)."""

from __future__ import annotations

import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from celery.utils.log import get_task_logger
from sqlalchemy import select

from app.config import Settings, get_settings
from app.data.limits import ScanLimits
from app.db.engine import session_scope
from app.db.models import File, FineTunedModel, Job, JobEvent
from app.errors import redact_paths
from app.jobs import improvement, naming, states
from app.jobs.lifecycle import transition
from app.jobs.method import method_object, method_type
from app.jobs.queue import RUN_JOB
from app.jobs.results import TENSORBOARD_FOLDER, write_metrics_csv, write_tensorboard_archive
from app.jobs.scheduling import claim_next
from app.jobs.sources import SourceProblem, find_source
from app.ml.artifacts import SERVICE_CONFIG
from app.storage import Storage, get_storage
from worker import metrics, trackers
from worker.celery_app import celery_app
from worker.reporting import DatabaseReporter, Heartbeat

log = get_task_logger(__name__)


@celery_app.task(name=RUN_JOB)
def run_job(message_job_id: str) -> str:
    settings = get_settings()
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    job = claim_next(message_job_id, worker_id, settings.lease_seconds)
    if job is None:
        log.info("no queued job for the turn of %s; nothing to do", message_job_id)
        return "skipped"
    if metrics.enabled():
        metrics.job_claimed(job.kind, _queued_since(job.id))
    started, outcome = time.monotonic(), "failed"
    try:
        with Heartbeat(job.id, settings.lease_seconds):
            outcome = _run_claimed(job, settings)
            return outcome
    except Exception as exc:  # any failure ends as a failed job with an error a user can read
        from worker.training import TrainingError

        if isinstance(exc, TrainingError):
            error = {"code": exc.code, "message": redact_paths(exc.message)}
        else:
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            error = {"code": "training_failed",
                     "message": redact_paths(f"Training failed: {type(exc).__name__}: {str(exc)[:500]}")}
        _finish(job.id, states.FAILED, f"Job failed: {error['message']}", level="error", error=error)
        return "failed"
    finally:
        metrics.job_ended(job.kind, job.task, outcome, time.monotonic() - started)


def _queued_since(job_id: str) -> int | None:
    """When the job last became queued (created, resumed or given back by a lost worker): its newest event
    that says so. Not ``enqueued_at``, which is when its turn was last sent, and a long wait sends it again."""
    with session_scope() as session:
        recent = session.execute(select(JobEvent.created_at, JobEvent.data).where(JobEvent.job_id == job_id)
                                 .order_by(JobEvent.seq.desc()).limit(20))
        return next((at for at, data in recent if (data or {}).get("status") == states.QUEUED), None)


def _finish(job_id: str, to: str, message: str, level: str = "info", **fields: Any) -> None:
    with session_scope() as session:
        transition(session, job_id, states.RUNNING, to, message, level=level, **fields)


def _run_claimed(job: Job, settings: Settings) -> str:
    if job.kind == "evaluation":  # POST /v1/evaluations: scored, not trained; it records its own outcome
        from worker.evaluation_runner import run_evaluation

        return run_evaluation(job, settings)
    from worker.launcher import launch
    from worker.training import train

    storage = get_storage()
    training_file, validation_file = _data_files(job, storage, settings)
    prefix = naming.checkpoints_prefix(job.project_id, job.id)
    # What an earlier attempt stored, maybe on another machine: the next attempt resumes from it.
    start = _starting_point(job, settings, storage)
    spec = _training_spec(job, settings, storage.pull(prefix), start)
    work = settings.data_dir.resolve() / "work" / job.id
    output = work / "model"
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    try:
        run = train if job.devices == 1 else partial(launch, devices=job.devices)
        outcome = run(spec, training_file, validation_file, output, DatabaseReporter(job, prefix), work_dir=work,
                      progress_interval_s=settings.progress_interval_s)
        if outcome.stopped == "cancel":
            _finish(job.id, states.CANCELLED, "Job cancelled.", trained_tokens=outcome.trained_tokens)
            return "cancelled"
        if outcome.stopped == "pause":
            _finish(job.id, states.PAUSED, f"Job paused at step {outcome.steps}; resume it with POST "
                                           f"/v1/fine_tuning/jobs/{job.id}/resume.", pause_requested=False)
            return "paused"
        return _register_model(job, outcome, output, storage, time.monotonic() - started, spec.tensorboard_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        storage.release(prefix)  # stored already: an object store's cache needs no copy
        if start.storage_key:
            storage.release(start.storage_key)


def _data_files(job: Job, storage: Storage, settings: Settings):
    """The job's training and validation files as the core reads them, read with the limits they were
    scanned with; a file deleted since the job was created fails it, saying which."""
    from worker.training import DataFile, TrainingError

    wanted = [job.training_file] + ([job.validation_file] if job.validation_file else [])
    with session_scope() as session:
        files = {f.id: f for f in session.scalars(select(File).where(File.id.in_(wanted)))}

    def data(file_id: str | None) -> DataFile | None:
        if not file_id:
            return None
        record = files.get(file_id)
        if record is None:
            raise TrainingError("file_not_found", f"File {file_id} was deleted before training.")
        if not storage.exists(record.storage_key):
            raise TrainingError("file_not_found", f"File {file_id} is missing from storage; upload it again and "
                                "create a new job.")
        return DataFile(storage.local_path(record.storage_key), record.format, sha256=record.sha256,
                        limits=ScanLimits.from_settings(settings))

    return data(job.training_file), data(job.validation_file)


@dataclass(frozen=True)
class _Start:
    """Where a job's weights come from: a base folder, or a fine-tuned model's (pulled from storage)."""

    base_model: str  # the base at the root of the lineage
    model_path: Path  # what the task loads: the base, or a full fine-tuned model's own folder
    init_adapter: Path | None = None  # a LoRA parent's adapter, loaded onto model_path
    storage_key: str | None = None  # the parent's weights, released after the job
    continues: bool = False


def _starting_point(job: Job, settings: Settings, storage: Storage) -> _Start:
    from worker.training import TrainingError

    with session_scope() as session:
        try:
            source = find_source(session, settings, job.project_id, job.model)
        except SourceProblem as problem:
            raise TrainingError(problem.code, f"{problem.message} (It was there when the job was created.)"
                                ) from None
    if source.is_base:
        return _Start(source.base.id, source.base.path)
    if not storage.exists(source.storage_key + "/" + SERVICE_CONFIG):
        raise TrainingError("model_not_found", f"The weights of '{job.model}' are missing from storage.")
    weights = storage.pull(source.storage_key)
    if source.adapter is not None:
        return _Start(source.base.id, source.base.path, weights, source.storage_key, continues=True)
    return _Start(source.base.id, weights, None, source.storage_key, continues=True)


def _training_spec(job: Job, settings: Settings, checkpoint_dir: Path, start: _Start):
    from worker.training import TrainingSpec, latest_checkpoint

    return TrainingSpec(
        task=job.task, base_model_path=str(start.model_path), base_model=start.base_model,
        init_adapter=start.init_adapter, continues=start.continues, column_mapping=job.column_mapping,
        plan=job.training_plan, hyperparameters=job.hyperparameters, seed=job.seed,
        checkpoint_dir=checkpoint_dir, keep_checkpoints=settings.keep_checkpoints,
        resume_from=latest_checkpoint(checkpoint_dir),
        token_cache_dir=settings.data_dir.resolve() / "cache" / "tokenized" if settings.token_cache_mb else None,
        token_cache_bytes=settings.token_cache_mb * 2**20,
        # Each project's tokenized data apart: a hit must never tell one project that another trained on
        # the same file.
        token_cache_namespace=job.project_id,
        callbacks=[*settings.trainer_callbacks, *([metrics.GPU_MEMORY_CALLBACK] if metrics.enabled() else [])],
        # TensorBoard next to the checkpoints: a resumed attempt adds to the events of the ones before.
        tensorboard_dir=checkpoint_dir / TENSORBOARD_FOLDER,
        integrations=trackers.tracker_runs(job.integrations, job_id=job.id, project_id=job.project_id,
                                           mlflow_tracking_uri=settings.mlflow_tracking_uri))


def _register_model(job: Job, outcome, output: Path, storage: Storage, seconds: float,
                    tensorboard_dir: Path | None = None) -> str:
    from worker.training import TrainingError

    base_model = job.base_model or job.model
    model_id = naming.fine_tuned_model_id(base_model, job.suffix, job.id)
    key = naming.model_key(job.project_id, job.id)
    size = storage.import_dir(key, output)
    with session_scope() as session:
        session.add(FineTunedModel(id=model_id, project_id=job.project_id, job_id=job.id, base_model=base_model,
                                   parent=job.model if job.model != base_model else None,
                                   task=job.task, storage_key=key, bytes=size))
        session.flush()
        row = session.get(Job, job.id)
        results = [write_metrics_csv(session, storage, row).id]
        events = write_tensorboard_archive(session, storage, row, tensorboard_dir) if tensorboard_dir else None
        results += [events.id] if events else []
        final_progress = {**(row.progress or {}), "step": outcome.steps, "total_steps": outcome.steps,
                          "percent": 100.0, "eta_seconds": 0}
        hyperparameters = outcome.hyperparameters  # as trained: an out-of-memory retry may have split batches
        better = improvement.summary(row.baseline_metrics, outcome.metrics)
        if not transition(session, job.id, states.RUNNING, states.SUCCEEDED,
                          f"Training finished in {seconds:.0f}s; model {model_id} is ready"
                          + (f": {better}." if better else "."),
                          data={"metrics": outcome.metrics,
                                "evaluation": improvement.evaluation_view(row.baseline_metrics, outcome.metrics)},
                          fine_tuned_model=model_id,
                          trained_tokens=outcome.trained_tokens, metrics=outcome.metrics, progress=final_progress,
                          result_files=results, hyperparameters=hyperparameters,
                          method=method_object(method_type(job.method), hyperparameters)):
            raise TrainingError("job_state_changed", "The job was moved by someone else while it trained.")
    if events:  # kept in the result file now; no attempt adds to them any more
        storage.delete(f"{naming.checkpoints_prefix(job.project_id, job.id)}/{TENSORBOARD_FOLDER}")
    return "succeeded"
