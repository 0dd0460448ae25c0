"""The hot read routes' queries — a job, the job list, a job's events, a file, a model — as Core SELECTs on
one short connection: no ORM session.

Profiling one job GET showed most of its time in the ORM session (building it, the identity map and
instance state, autobegin, the commit) rather than in the query. These return plain rows whose
attribute names are the ORM's, so app.api.presenters shows them exactly as it shows ORM objects, and
raise the same 404s as the services they stand beside (app.services.jobs, files, models). They never
write: the routes that change something keep the session and its transaction. Call them from a worker
thread; each holds a pooled connection only for its own queries."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, bindparam, func, select
from sqlalchemy.exc import DBAPIError

from app.config import Settings
from app.db.engine import get_read_engine
from app.db.models import File, FineTunedModel, Job, JobEvent
from app.errors import not_found
from app.ml.base_models import BaseModel, list_base_models
from app.services.keys import ProjectRef

T = TypeVar("T")


def _columns(model, leave_out: tuple[str, ...] = ()) -> list:
    """The model's columns, labelled with the ORM attribute names (``metadata_``), except those no answer
    shows. Each column a query returns costs the driver an object per execution (psycopg builds the
    cursor's description anew): a job read of all 38 spent more on that than on the query."""
    return [column.label(key) for key, column in model.__mapper__.columns.items() if key not in leave_out]


# What the worker and the queue keep on a job for themselves, and its training plan (large).
_JOB_BOOKKEEPING = ("training_plan", "kind", "devices", "cancel_requested", "pause_requested", "interruptions",
                    "enqueued_at", "lease_expires_at", "worker_id", "event_seq", "idempotency_key", "request_hash",
                    "started_at")
_JOB = select(*_columns(Job, _JOB_BOOKKEEPING))
_OWNED_JOB = (Job.id == bindparam("id"), Job.project_id == bindparam("project"),
              func.coalesce(Job.kind, "fine_tune") == "fine_tune")
_JOB_BY_ID = _JOB.where(*_OWNED_JOB)
_JOB_ID = select(Job.id).where(*_OWNED_JOB)
# A file's column statistics (large) and where its bytes lie.
_FILE_BY_ID = select(*_columns(File, ("profile", "storage_key"))).where(File.id == bindparam("id"),
                                                                         File.project_id == bindparam("project"))
_EVENT = select(*_columns(JobEvent))
_EVENT_ANCHOR = select(JobEvent.job_id, JobEvent.seq).where(JobEvent.id == bindparam("id"))
_MODEL_BY_ID = select(*_columns(FineTunedModel)).where(FineTunedModel.id == bindparam("id"),
                                                       FineTunedModel.project_id == bindparam("project"))


def _on_a_read_connection(query: Callable[..., T]) -> Callable[..., T]:
    """Runs ``query(conn, *args)`` on a connection of the read pool (app.db.engine.get_read_engine: no
    ping before each read, no transaction around it). A connection the database dropped (a restart, a
    failover) shows as an error on its first use; SQLAlchemy then discards the whole pool, and the read,
    which changes nothing, runs once more on a new connection."""

    def once(*args: Any) -> T:
        with get_read_engine().connect() as conn:
            return query(conn, *args)

    @wraps(query)
    def run(*args: Any) -> T:
        try:
            return once(*args)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        return once(*args)

    return run


@_on_a_read_connection
def job(conn: Connection, project: ProjectRef, job_id: str) -> Row:
    return _job(conn, project, job_id)


def _job(conn, project: ProjectRef, job_id: str, param: str = "fine_tuning_job_id", query=_JOB_BY_ID) -> Row:
    row = conn.execute(query, {"id": job_id, "project": project.id}).first()
    if row is None:
        raise not_found("fine_tuning_job", job_id, param)
    return row


@_on_a_read_connection
def jobs(conn: Connection, project: ProjectRef, after: str | None, limit: int, status: str | None,
         metadata: dict[str, str]) -> list[Row]:
    """A page of the project's jobs, newest first (``limit + 1`` rows: the extra one says there is more)."""
    query = _JOB.where(Job.project_id == project.id, Job.kind == "fine_tune")
    if status:
        query = query.where(Job.status == status)
    for key, value in metadata.items():
        query = query.where(Job.metadata_[key].as_string() == value)
    if after:
        query = query.where(Job.id < _job(conn, project, after, "after", _JOB_ID).id)  # ids are time-ordered
    return list(conn.execute(query.order_by(Job.id.desc()).limit(limit + 1)))


@_on_a_read_connection
def events(conn: Connection, project: ProjectRef, job_id: str, after: str | None, limit: int) -> list[Row]:
    """A page of the job's events, newest first."""
    _job(conn, project, job_id, query=_JOB_ID)
    query = _EVENT.where(JobEvent.job_id == job_id)
    if after:
        anchor = conn.execute(_EVENT_ANCHOR, {"id": after}).first()
        if anchor is None or anchor.job_id != job_id:
            raise not_found("event", after, "after")
        query = query.where(JobEvent.seq < anchor.seq)
    return list(conn.execute(query.order_by(JobEvent.seq.desc()).limit(limit + 1)))


@_on_a_read_connection
def file(conn: Connection, project: ProjectRef, file_id: str) -> Row:
    row = conn.execute(_FILE_BY_ID, {"id": file_id, "project": project.id}).first()
    if row is None:
        raise not_found("file", file_id)
    return row


@_on_a_read_connection
def model(conn: Connection, settings: Settings, project: ProjectRef, model_id: str) -> Row | BaseModel:
    """One of the project's fine-tuned models, else a base model on offer."""
    row = conn.execute(_MODEL_BY_ID, {"id": model_id, "project": project.id}).first()
    if row is not None:
        return row
    base: Any = list_base_models(settings).get(model_id)
    if base is None:
        raise not_found("model", model_id, "model")
    return base
