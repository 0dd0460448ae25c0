"""Job events: an append-only log with a per-job sequence number (the SSE ``id:``). Writing one also
wakes the job's followers once the transaction commits (:mod:`app.jobs.notify`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent, now
from app.ids import new_id
from app.jobs.notify import announce


def append_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    # UPDATE … RETURNING takes the row lock, so the API and the worker never hand out one number twice.
    seq = session.execute(
        update(Job).where(Job.id == job_id).values(event_seq=Job.event_seq + 1).returning(Job.event_seq)
    ).scalar_one()
    event = JobEvent(
        id=new_id("ftevent"), job_id=job_id, seq=seq, created_at=now(), level=level, type=type,
        message=message, data=data,
    )
    session.add(event)
    announce(session, job_id)
    return event
