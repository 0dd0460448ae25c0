"""The database side of an evaluation (a jobs row of kind "evaluation"): find the model and the file it
names, pull the weights from storage, run the pure core (worker/evaluation.py) with a DatabaseReporter,
and record the outcome — metrics and the per-row result file, or why it failed, or that it was
cancelled. job_runner claims the row and keeps its lease; nothing here knows Celery."""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from app.config import Settings
from app.data.limits import ScanLimits
from app.db.engine import session_scope
from app.db.models import File, Job
from app.errors import redact_paths
from app.ids import new_id
from app.jobs import naming, states
from app.jobs.lifecycle import transition
from app.jobs.sources import ModelSource, find_source
from app.storage import Storage, get_storage
from worker.evaluation import EvaluationError, EvaluationSpec, ModelFiles, evaluate
from worker.preparation import DataFile
from worker.reporting import DatabaseReporter

log = logging.getLogger(__name__)

RESULT_COLUMNS = ["line", "input", "prediction", "reference"]


def run_evaluation(job: Job, settings: Settings) -> str:
    """Runs the claimed evaluation to its end and records how it ended; never raises."""
    storage = get_storage()
    work = settings.data_dir.resolve() / "work" / job.id
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pulled: list[str] = []
    started = time.monotonic()
    try:
        spec, data = _spec_and_data(job, settings, storage, pulled)
        # No checkpoints: the prefix is only the reporter's for jobs that train.
        reporter = DatabaseReporter(job, naming.checkpoints_prefix(job.project_id, job.id))
        outcome = evaluate(spec, data, work / "predictions.jsonl", reporter, work, settings.progress_interval_s)
        if outcome.stopped:
            _finish(job.id, states.CANCELLED, "Evaluation cancelled.")
            return "cancelled"
        return _record(job, outcome, work / "predictions.jsonl", storage, time.monotonic() - started)
    except Exception as exc:  # any failure ends as a failed evaluation with an error a user can read
        code, message = getattr(exc, "code", None), getattr(exc, "message", None)
        if not (isinstance(code, str) and isinstance(message, str)):
            log.error("evaluation %s failed:\n%s", job.id, traceback.format_exc())
            code, message = "evaluation_failed", f"{type(exc).__name__}: {str(exc)[:500]}"
        error = {"code": code, "message": redact_paths(message)}
        _finish(job.id, states.FAILED, f"Evaluation failed: {error['message']}", level="error", error=error)
        return "failed"
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for key in pulled:
            storage.release(key)  # an object store's local copy of the weights is no longer needed


def _finish(job_id: str, to: str, message: str, level: str = "info", **fields: Any) -> None:
    with session_scope() as session:
        transition(session, job_id, states.RUNNING, to, message, level=level, **fields)


def _spec_and_data(job: Job, settings: Settings, storage: Storage, pulled: list[str]):
    """What the core runs on, found again now (the model or the file may have been deleted since the
    request was checked)."""
    options = job.hyperparameters or {}
    with session_scope() as session:
        # A SourceProblem (the model deleted since) carries its code and message, like EvaluationError.
        source = find_source(session, settings, job.project_id, job.model)
        reference_id = options.get("reference_model")
        reference = find_source(session, settings, job.project_id, reference_id) if reference_id else None
        record = session.get(File, job.training_file)
        stored = (record.storage_key, record.format, record.sha256) if record is not None else None
    if stored is None or not storage.exists(stored[0]):
        raise EvaluationError("file_not_found", f"File {job.training_file} was deleted before the evaluation ran; "
                              "upload it again and create a new evaluation.")
    data = DataFile(storage.local_path(stored[0]), stored[1], sha256=stored[2],
                    limits=ScanLimits.from_settings(settings))
    spec = EvaluationSpec(task=job.task, model=_files(source, storage, pulled), column_mapping=job.column_mapping,
                          plan=job.training_plan, max_seq_length=int(options["max_seq_length"]),
                          batch_size=int(options.get("batch_size") or 8), metrics=options.get("metrics"),
                          reference=_files(reference, storage, pulled) if reference else None,
                          beta=float(options.get("beta") or 0.1), seed=job.seed)
    return spec, data


def _files(source: ModelSource, storage: Storage, pulled: list[str]) -> ModelFiles:
    if source.is_base:
        return ModelFiles(str(source.base.path))
    folder = storage.pull(source.storage_key)
    pulled.append(source.storage_key)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise EvaluationError("model_not_found", f"The weights of '{source.id}' are missing from storage.")
    return ModelFiles(str(source.base.path), str(folder))


def _record(job: Job, outcome, predictions: Path, storage: Storage, seconds: float) -> str:
    """The result file and the metrics, and the evaluation succeeded, in one transaction."""
    content = predictions.read_bytes()
    file_id = new_id("file")
    key = naming.file_key(job.project_id, file_id)
    storage.write_bytes(key, content)
    listed = ", ".join(f"{name.removeprefix('eval_')} {value:.4g}" for name, value in outcome.metrics.items())
    with session_scope() as session:
        session.add(File(id=file_id, project_id=job.project_id, filename=f"{job.id}_predictions.jsonl",
                         purpose="fine-tune-results", bytes=len(content), sha256=hashlib.sha256(content).hexdigest(),
                         format="jsonl", rows=outcome.rows, columns=RESULT_COLUMNS, profile={},
                         validation={"errors": [], "warnings": []}, status="processed", storage_key=key))
        session.flush()
        row = session.get(Job, job.id)
        total = (row.progress or {}).get("total_steps") or 1
        done = {**(row.progress or {}), "step": total, "total_steps": total, "percent": 100.0, "eta_seconds": 0}
        if not transition(session, job.id, states.RUNNING, states.SUCCEEDED,
                          f"Evaluation finished in {seconds:.0f}s on {outcome.rows} rows: {listed or 'no metrics'}.",
                          data={"metrics": outcome.metrics}, metrics=outcome.metrics, result_files=[file_id],
                          progress=done):
            raise EvaluationError("job_state_changed", "The evaluation was moved by someone else while it ran.")
    return "succeeded"
