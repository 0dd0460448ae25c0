"""How many jobs there are by kind and status, and how many wait in each worker queue: two grouped counts
for the operator's gauges (app.observability), read when /metrics is scraped.

The database, not the broker, is counted: a message is a turn, not a job (app.jobs.queue), so a broker's
queue length counts re-sent turns twice and lost ones never, and it reads the same with Redis and the
embedded SQLite broker. The queued count uses the (status, devices) index; the count by status reads
the status column, a few bytes a job."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import Job
from app.jobs import states
from app.jobs.queue import job_queue

KINDS = ("fine_tune", "evaluation")


def jobs_by_status(session: Session) -> dict[tuple[str, str], int]:
    """Every (kind, status), zeros included, so that a status emptied since the last scrape reads 0."""
    counts = {(kind, status): 0 for kind in KINDS for status in states.ALLOWED}
    for kind, status, count in session.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind,
                                                                                                   Job.status)):
        counts[(kind or "fine_tune", status)] = count
    return counts


def queue_depths(session: Session, base_queue: str) -> dict[str, int]:
    """Queued jobs per worker queue (``gpu`` for one device, ``gpu-xN`` for N); the one-device queue always."""
    depths = {base_queue: 0}
    rows = session.execute(select(Job.devices, func.count()).where(Job.status == states.QUEUED)
                           .group_by(Job.devices))
    for devices, count in rows:
        depths[job_queue(base_queue, devices)] = depths.get(job_queue(base_queue, devices), 0) + count
    return depths
