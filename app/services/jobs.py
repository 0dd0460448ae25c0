"""Fine-tuning jobs, the API's verbs: create (after :mod:`app.services.job_planning` checked it), list,
retrieve, cancel, pause and resume, and read a job's events and checkpoints. A job's turn is sent to the
workers only once the transaction that queued it commits (app.jobs.queue)."""

from __future__ import annotations

import hashlib
import json
import random

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Checkpoint, Job, JobEvent, now
from app.errors import ApiError, not_found
from app.ids import new_id
from app.jobs import states
from app.jobs.events import append_event
from app.jobs.lifecycle import transition
from app.jobs.method import method_object
from app.jobs.queue import enqueue_after_commit
from app.schemas.jobs import JobCreate
from app.services.integrations import checked_integrations
from app.services.job_planning import plan_job
from app.services.keys import ProjectRef
from app.services.quotas import check_active_jobs


def _request_hash(body: JobCreate) -> str:
    return hashlib.sha256(body.model_dump_json(exclude_none=True).encode()).hexdigest()


def create_job(session: Session, settings: Settings, project: ProjectRef, body: JobCreate,
               idempotency_key: str | None = None) -> Job:
    """The new job, queued: its turn goes to the workers once the request's transaction commits. With an
    Idempotency-Key already used for the same body, the job that request created."""
    request_hash = _request_hash(body)
    if idempotency_key:
        existing = _job_with_key(session, project, idempotency_key, request_hash)
        if existing is not None:
            return existing
    check_active_jobs(session, project)  # before the work of checking the files
    integrations = checked_integrations(body.integrations, settings)

    planned = plan_job(session, settings, project, body)
    body, train, valid, task_name = planned.body, planned.train, planned.valid, planned.task.name
    mapping, plan, resolved = planned.mapping, planned.plan, planned.hyperparameters
    job = Job(
        id=new_id("ftjob"), project_id=project.id, model=body.model, base_model=planned.base.id, task=task_name,
        training_file=train.id,
        validation_file=valid.id if valid else None, suffix=body.suffix or None,
        seed=body.seed if body.seed is not None else random.randint(0, 2**31 - 1), metadata_=body.metadata,
        integrations=integrations or None,
        method=method_object(planned.method, resolved), hyperparameters=resolved,
        column_mapping=mapping, training_plan=plan, status=states.QUEUED, attempt=0, created_at=now(),
        enqueued_at=now(),
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
        return existing
    append_event(session, job.id, f"Validated training file: {train.rows} rows, task {task_name}, columns "
                                  f"{json.dumps(mapping)}.", data={"rows": train.rows})
    append_event(session, job.id, "Job queued.", data={"status": states.QUEUED})
    enqueue_after_commit(session, job.id, job.devices)
    return job


def _job_with_key(session: Session, project: ProjectRef, idempotency_key: str, request_hash: str) -> Job | None:
    """The job an earlier request with this Idempotency-Key created (409 if its body differed)."""
    existing = session.scalar(select(Job).where(Job.project_id == project.id, Job.idempotency_key == idempotency_key))
    if existing is not None and existing.request_hash != request_hash:
        raise ApiError(409, "This Idempotency-Key was already used with a different request body.",
                       param="Idempotency-Key", code="idempotency_key_reused")
    return existing


def get_job(session: Session, project: ProjectRef, job_id: str) -> Job:
    job = session.get(Job, job_id)
    # Evaluations share the table (kind "evaluation") and have routes of their own (app.services.evaluations).
    if job is None or job.project_id != project.id or (job.kind or "fine_tune") != "fine_tune":
        raise not_found("fine_tuning_job", job_id, "fine_tuning_job_id")
    return job


def list_jobs(session: Session, project: ProjectRef, after: str | None, limit: int, status: str | None,
              metadata: dict[str, str]) -> list[Job]:
    query = select(Job).where(Job.project_id == project.id, Job.kind == "fine_tune")
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
    if job.status in states.TERMINAL:
        raise ApiError(409, f"Job {job_id} has already {job.status}; there is nothing to cancel.",
                       param="fine_tuning_job_id", code="job_not_cancellable")
    idle = frozenset({states.QUEUED, states.PAUSED, states.VALIDATING})
    return _stop(session, job, states.CANCELLED, idle, "Job cancelled.", "cancel_requested",
                 "Cancellation requested; the worker will stop at the next step.")


def pause_job(session: Session, project: ProjectRef, job_id: str) -> Job:
    job = get_job(session, project, job_id)
    if job.status not in (states.QUEUED, states.RUNNING):
        raise ApiError(409, f"Job {job_id} is {job.status}; only queued or running jobs can be paused.",
                       param="fine_tuning_job_id", code="job_not_pausable")
    return _stop(session, job, states.PAUSED, states.QUEUED, "Job paused before it started.",
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
    if not transition(session, job_id, states.PAUSED, states.QUEUED,
                      "Job resumed; it continues from its last checkpoint.", enqueued_at=now(), pause_requested=False):
        raise ApiError(409, f"Job {job_id} is {job.status}; only paused jobs can be resumed.",
                       param="fine_tuning_job_id", code="job_not_resumable")
    enqueue_after_commit(session, job.id, job.devices)
    session.flush()
    session.refresh(job)
    return job


def list_checkpoints(session: Session, job: Job, after: str | None, limit: int) -> list[Checkpoint]:
    query = select(Checkpoint).where(Checkpoint.job_id == job.id)
    if after:
        query = query.where(Checkpoint.id < after)
    return list(session.scalars(query.order_by(Checkpoint.id.desc()).limit(limit + 1)))


def list_events(session: Session, job: Job, after: str | None, limit: int) -> list[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job.id)
    if after:
        anchor = session.get(JobEvent, after)
        if anchor is None or anchor.job_id != job.id:
            raise not_found("event", after, "after")
        query = query.where(JobEvent.seq < anchor.seq)
    return list(session.scalars(query.order_by(JobEvent.seq.desc()).limit(limit + 1)))
