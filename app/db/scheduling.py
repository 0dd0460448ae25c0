"""Which queued job runs next: fair between projects, on top of Celery's first-in-first-out queues.

Celery messages are turns, not orders (worker.tasks): every queued job has sent one message to the
queue of its device count, and a worker that takes a message claims the job this query names, which
may be another job of the same device count. The order:

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

from app.db import transitions as st
from app.db.models import Job


def next_job_query(devices: int) -> Select:
    """SELECT the id of the queued job of ``devices`` devices that should run next."""
    other = aliased(Job)
    running_in_project = (select(func.count(other.id))
                          .where(other.project_id == Job.project_id, other.status == st.RUNNING)
                          .correlate(Job).scalar_subquery())
    last_start_in_project = (select(func.coalesce(func.max(other.started_at), 0))
                             .where(other.project_id == Job.project_id)
                             .correlate(Job).scalar_subquery())
    return (select(Job.id).where(Job.status == st.QUEUED, Job.devices == devices)
            .order_by(running_in_project, last_start_in_project, Job.enqueued_at, Job.id).limit(1))
