"""Which queued job runs next, and the lease that says its worker is alive: fair between projects, on top
of Celery's first-in-first-out queues.

Celery messages are turns, not orders (app.jobs.queue): every queued job has sent one message to the
queue of its device count, and a worker that takes a message claims the job :func:`next_job_query`
names, which may be another job of the same device count. The order:

1. projects with the fewest jobs running now first, so a project that has a worker already waits
   for one that has none;
2. among those, the project served least recently first (never-served projects before all), so
   projects take turns — round-robin — however many jobs each queued;
3. within a project, its jobs in the order they were queued.

So a project with a hundred queued jobs delays another project's first job by at most the job each
worker is running when it arrives. Nothing is reserved: a project alone gets every worker."""

from __future__ import annotations

from sqlalchemy import Select, func, select
from sqlalchemy.orm import aliased

from app.db.engine import session_scope
from app.db.models import Job, now
from app.jobs import states
from app.jobs.events import append_event

# Claims lost to another worker before this one gives the turn up (each loss means a job did start).
CLAIM_ATTEMPTS = 10


def next_job_query(devices: int) -> Select:
    """SELECT the id of the queued job of ``devices`` devices that should run next."""
    other = aliased(Job)
    running_in_project = (select(func.count(other.id))
                          .where(other.project_id == Job.project_id, other.status == states.RUNNING)
                          .correlate(Job).scalar_subquery())
    last_start_in_project = (select(func.coalesce(func.max(other.started_at), 0))
                             .where(other.project_id == Job.project_id)
                             .correlate(Job).scalar_subquery())
    return (select(Job.id).where(Job.status == states.QUEUED, Job.devices == devices)
            .order_by(running_in_project, last_start_in_project, Job.enqueued_at, Job.id).limit(1))


def claim_next(message_job_id: str, worker_id: str, lease_seconds: int) -> Job | None:
    """For the turn a message brought (it names the job that sent it, whose device count says which
    jobs may run here), the queued job to run now, claimed with a conditional UPDATE: two workers
    never claim one job, and a duplicate message finds nothing to claim. None when no job is queued."""
    with session_scope() as session:
        devices = session.scalar(select(Job.devices).where(Job.id == message_job_id))
    if devices is None:
        return None
    for _ in range(CLAIM_ATTEMPTS):
        with session_scope() as session:
            job_id = session.scalar(next_job_query(devices))
            if job_id is None:
                return None
            if not states.move(session, job_id, states.QUEUED, states.RUNNING, attempt=Job.attempt + 1,
                               worker_id=worker_id, lease_expires_at=now() + lease_seconds,
                               started_at=func.coalesce(Job.started_at, now())):
                continue  # another worker took it first: pick again
            job = session.get(Job, job_id)
            append_event(session, job_id, f"Job started on {worker_id} (attempt {job.attempt}).",
                         data={"status": states.RUNNING, "attempt": job.attempt})
            return job
    return None


def renew_lease(job_id: str, lease_seconds: int) -> None:
    """The running job's worker is alive: the reaper leaves the job alone for another ``lease_seconds``."""
    with session_scope() as session:
        session.execute(Job.__table__.update().where(Job.id == job_id, Job.status == states.RUNNING)
                        .values(lease_expires_at=now() + lease_seconds))
