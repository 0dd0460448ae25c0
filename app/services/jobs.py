"""Create, list and cancel fine-tuning jobs. Everything is checked against the files *before* a job
exists, so nothing invalid ever reaches a worker; the job id is enqueued only after the row commits."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.data.scan import ScanLimits, iter_numbered_records
from app.db import transitions as st
from app.db.events import append_event
from app.db.models import Checkpoint, File, Job, JobEvent, now
from app.services.keys import ProjectRef
from app.services.lifecycle import transition
from app.services.quotas import check_active_jobs
from app.errors import ApiError, bad_request, not_found
from app.ids import new_id
from app.ml import hyperparams
from app.ml.adapters import resolve_adapter
from app.ml.base_models import list_base_models
from app.ml.tasks import TASKS, FieldProblem, get_task
from app.schemas.jobs import JobCreate, supervised_method
from app.storage import get_storage

log = logging.getLogger(__name__)


def _usable_file(session: Session, project: ProjectRef, file_id: str, param: str) -> File:
    record = session.get(File, file_id)
    if record is None or record.project_id != project.id:
        raise bad_request(f"No file with id '{file_id}'. Upload it with POST /v1/files first.", param,
                          code="file_not_found")
    if record.status != "processed":
        first = (record.validation.get("errors") or [{"message": "it could not be read"}])[0]
        where = f" (line {first['line']})" if first.get("line") else ""
        raise bad_request(f"{param} {file_id} has validation errors{where}: {first['message']} Fix the file and "
                          "upload it again; GET /v1/files/{id} lists every problem.", param, code="invalid_file")
    return record


def _base_model(settings: Settings, model: str):
    models = list_base_models(settings)
    found = models.get(model)
    if found is None:
        offered = ", ".join(sorted(m for m, b in models.items() if b.usable)) or "none"
        raise bad_request(f"Unknown base model '{model}'. This deployment offers: {offered}.", "model",
                          code="model_not_found")
    if not found.usable:
        raise bad_request(f"Base model '{model}' cannot be fine-tuned: {found.problem}.", "model",
                          code="model_not_supported")
    return found


def _model_config(path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _request_hash(body: JobCreate) -> str:
    return hashlib.sha256(body.model_dump_json(exclude_none=True).encode()).hexdigest()


@dataclass
class PlannedJob:
    """A job request checked against its files and base model, hyperparameters resolved: all a job
    (or an estimate of one) is made from."""

    body: JobCreate
    task: Any
    mapping: dict[str, str]
    plan: dict[str, Any]
    hyperparameters: dict[str, Any]
    train: File
    valid: File | None
    base: Any


def plan_job(session: Session, settings: Settings, project: ProjectRef, body: JobCreate) -> PlannedJob:
    """Every check a job request goes through before it may exist; raises a 400 naming the field."""
    method = body.method or _legacy_method(body)
    if method.type != "supervised":
        raise bad_request(f"method.type '{method.type}' is not supported yet; use 'supervised'.", "method.type",
                          code="unsupported_method")
    requested = (method.supervised.hyperparameters if method.supervised else None) or body.hyperparameters
    requested_values = requested.checked() if requested else {}
    adapter_request = body.adapter or (requested.adapter if requested else None)

    base = _base_model(settings, body.model)
    train = _usable_file(session, project, body.training_file, "training_file")
    valid = _usable_file(session, project, body.validation_file, "validation_file") if body.validation_file else None

    task_name, mapping = _task_and_mapping(body, train)
    task = get_task(task_name)
    for key in set(requested_values) - set(task.default_hyperparameters):
        if any(key in other.default_hyperparameters for other in TASKS.values()):
            raise bad_request(f"{key} applies to other tasks than {task_name}.",
                              f"method.supervised.hyperparameters.{key}")
    try:
        plan = task.plan(mapping, train.profile, valid.profile if valid else None)
        if body.chat_template is not None:
            if "chat_template" not in plan:
                raise FieldProblem("chat_template", f"chat_template applies to text-generation jobs, not {task_name}.")
            plan["chat_template"] = body.chat_template
        task.check_base_model(base.path, base.model_type, task.plan_with_options(plan, requested_values))
        adapter = resolve_adapter(adapter_request.model_dump(exclude_none=True) if adapter_request else None,
                                  base.model_type, base.path)
        storage = get_storage()
        for record, param in ((train, "training_file"), (valid, "validation_file")):
            if record is not None:
                task.check_rows(iter_numbered_records(storage.local_path(record.storage_key), record.format,
                                                      ScanLimits.from_settings(settings)),
                                mapping, param)
    except FieldProblem as problem:
        raise bad_request(problem.message, problem.param) from None

    mean_chars = sum(train.profile.get(mapping.get(role, ""), {}).get("text_chars_mean", 0.0)
                     for role in task.length_roles)
    config = _model_config(base.path)
    resolved = hyperparams.resolve(requested_values, train.rows,
                                   config.get("max_position_embeddings") or config.get("n_positions"), mean_chars,
                                   has_validation_file=valid is not None, task=task, adapter=adapter,
                                   model_width=config.get("hidden_size") or config.get("d_model")
                                   or config.get("n_embd"))
    return PlannedJob(body, task, mapping, plan, resolved, train, valid, base)


def create_job(session: Session, settings: Settings, project: ProjectRef, body: JobCreate,
               idempotency_key: str | None = None) -> tuple[Job, bool]:
    """Returns (job, created). With an Idempotency-Key already used for the same body, the first job."""
    request_hash = _request_hash(body)
    if idempotency_key:
        existing = _job_with_key(session, project, idempotency_key, request_hash)
        if existing is not None:
            return existing, False
    check_active_jobs(session, project)  # before the work of checking the files

    planned = plan_job(session, settings, project, body)
    body, train, valid, task_name = planned.body, planned.train, planned.valid, planned.task.name
    mapping, plan, resolved = planned.mapping, planned.plan, planned.hyperparameters
    job = Job(
        id=new_id("ftjob"), project_id=project.id, model=body.model, task=task_name, training_file=train.id,
        validation_file=valid.id if valid else None, suffix=body.suffix or None,
        seed=body.seed if body.seed is not None else random.randint(0, 2**31 - 1), metadata_=body.metadata,
        method=supervised_method(resolved), hyperparameters=resolved,
        column_mapping=mapping, training_plan=plan, status=st.QUEUED, attempt=0, created_at=now(), enqueued_at=now(),
        idempotency_key=idempotency_key, request_hash=request_hash, devices=int(resolved.get("devices") or 1),
    )
    session.add(job)
    try:
        session.flush()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key inserted first: answer with its job.
        session.rollback()
        existing = _job_with_key(session, project, idempotency_key, request_hash) if idempotency_key else None
        if existing is None:
            raise
        return existing, False
    append_event(session, job.id, f"Validated training file: {train.rows} rows, task {task_name}, columns "
                                  f"{json.dumps(mapping)}.", data={"rows": train.rows})
    append_event(session, job.id, "Job queued.", data={"status": st.QUEUED})
    return job, True


def _job_with_key(session: Session, project: ProjectRef, idempotency_key: str, request_hash: str) -> Job | None:
    """The job an earlier request with this Idempotency-Key created (409 if its body differed)."""
    existing = session.scalar(select(Job).where(Job.project_id == project.id, Job.idempotency_key == idempotency_key))
    if existing is not None and existing.request_hash != request_hash:
        raise ApiError(409, "This Idempotency-Key was already used with a different request body.",
                       param="Idempotency-Key", code="idempotency_key_reused")
    return existing


def _legacy_method(body: JobCreate):
    from app.schemas.jobs import Method, Supervised

    return Method(type="supervised", supervised=Supervised(hyperparameters=body.hyperparameters or {}))


def _task_and_mapping(body: JobCreate, train: File) -> tuple[str, dict[str, str]]:
    if body.task == "auto":
        if not train.detected_task:
            raise bad_request("The task could not be detected from training_file's columns "
                              f"({', '.join(train.columns)}). Set 'task' and 'column_mapping'.", "task",
                              code="task_not_detected")
        task_name = train.detected_task
    else:
        task_name = get_task_or_400(body.task).name
    task = get_task(task_name)
    detected = task.detect(train.profile) or task.guess_mapping(train.profile)
    given = body.column_mapping or {}
    for role in given:
        if role not in task.roles:
            raise bad_request(f"'{role}' is not a column role of {task_name}; its roles are: "
                              f"{', '.join(task.roles)}.", f"column_mapping.{role}")
    return task_name, {**detected, **given}


def get_task_or_400(name: str):
    try:
        return get_task(name)
    except FieldProblem as problem:
        raise bad_request(problem.message, problem.param) from None


def get_job(session: Session, project: ProjectRef, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.project_id != project.id:
        raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
    return job


def list_jobs(session: Session, project: ProjectRef, after: str | None, limit: int, status: str | None,
              metadata: dict[str, str]) -> list[Job]:
    query = select(Job).where(Job.project_id == project.id)
    if status:
        query = query.where(Job.status == status)
    for key, value in metadata.items():
        query = query.where(Job.metadata_[key].as_string() == value)
    if after:
        anchor = get_job(session, project, after)
        query = query.where(Job.id < anchor.id)  # ids are time-ordered (app.ids)
    return list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))


def cancel_job(session: Session, project: ProjectRef, job_id: str) -> Job:
    job = get_job(session, project, job_id)
    if job.status in st.TERMINAL:
        raise ApiError(409, f"Job {job_id} has already {job.status}; there is nothing to cancel.",
                       param="fine_tuning_job_id", code="job_not_cancellable")
    return _stop(session, job, st.CANCELLED, frozenset({st.QUEUED, st.PAUSED, st.VALIDATING}), "Job cancelled.",
                 "cancel_requested", "Cancellation requested; the worker will stop at the next step.")


def pause_job(session: Session, project: ProjectRef, job_id: str) -> Job:
    job = get_job(session, project, job_id)
    if job.status not in (st.QUEUED, st.RUNNING):
        raise ApiError(409, f"Job {job_id} is {job.status}; only queued or running jobs can be paused.",
                       param="fine_tuning_job_id", code="job_not_pausable")
    return _stop(session, job, st.PAUSED, st.QUEUED, "Job paused before it started.",
                 "pause_requested", "Pause requested; the worker will save a checkpoint and stop.")


def _stop(session: Session, job: Job, to: str, idle: str | frozenset[str], idle_message: str, flag: str,
          flag_message: str) -> Job:
    """A job no worker holds moves at once; a running one gets a flag that its training callback reads
    within a second (cooperative: the worker is never killed)."""
    if not transition(session, job.id, idle, to, idle_message):
        setattr(job, flag, True)
        append_event(session, job.id, flag_message)
    session.flush()
    session.refresh(job)
    return job


def resume_job(session: Session, project: ProjectRef, job_id: str) -> Job:
    job = get_job(session, project, job_id)
    if not transition(session, job_id, st.PAUSED, st.QUEUED, "Job resumed; it continues from its last checkpoint.",
                      enqueued_at=now(), pause_requested=False):
        raise ApiError(409, f"Job {job_id} is {job.status}; only paused jobs can be resumed.",
                       param="fine_tuning_job_id", code="job_not_resumable")
    session.flush()
    session.refresh(job)
    return job


def list_checkpoints(session: Session, job: Job, after: str | None, limit: int) -> list[Checkpoint]:
    query = select(Checkpoint).where(Checkpoint.job_id == job.id)
    if after:
        query = query.where(Checkpoint.id < after)
    return list(session.scalars(query.order_by(Checkpoint.id.desc()).limit(limit + 1)))


def metrics_series(session: Session, job: Job) -> list[dict[str, Any]]:
    """The job's per-step metrics, oldest first: training logs and evaluations, merged by step."""
    rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.type == "metrics")
                           .order_by(JobEvent.seq))
    by_step: dict[int, dict[str, Any]] = {}
    for event in rows:
        data = event.data or {}
        point = by_step.setdefault(int(data.get("step", 0)), {"step": int(data.get("step", 0))})
        point.update({k: v for k, v in data.items() if isinstance(v, (int, float)) and k != "step"})
    return [by_step[k] for k in sorted(by_step)]


def list_events(session: Session, job: Job, after: str | None, limit: int) -> list[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job.id)
    if after:
        anchor = session.get(JobEvent, after)
        if anchor is None or anchor.job_id != job.id:
            raise not_found("event", after, "after")
        query = query.where(JobEvent.seq < anchor.seq)
    return list(session.scalars(query.order_by(JobEvent.seq.desc()).limit(limit + 1)))


def enqueue(settings: Settings, job_id: str, devices: int = 1) -> None:
    """Hand the job id to the broker, on the queue of workers with ``devices`` GPUs. Called only after
    the job row has committed."""
    from worker.celery_app import celery_app, job_queue

    try:
        celery_app.send_task("worker.tasks.run_job", args=[job_id], queue=job_queue(settings.gpu_queue, devices))
    except Exception:  # the row stays queued, the truth; the client sees the job and can cancel it
        log.exception("could not enqueue job %s", job_id)


