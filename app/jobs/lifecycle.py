"""Moving a job to a new status, with its event and (for terminal states) its webhook notifications,
in the caller's transaction. The API, the worker and the reaper all go through here."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.db.models import Job, now
from app.jobs import states
from app.jobs.events import append_event
from app.jobs.notifications import record_job_event


def transition(session: Session, job_id: str, from_status: str | frozenset[str], to: str, message: str, *,
               level: str = "info", data: dict[str, Any] | None = None, **fields: Any) -> bool:
    """Moves the job (see :func:`app.jobs.states.move`) and records why; False when it was not in
    ``from_status`` any more."""
    if to in states.TERMINAL:
        fields.setdefault("finished_at", now())
    if to != states.RUNNING:
        fields.setdefault("lease_expires_at", None)
    if not states.move(session, job_id, from_status, to, **fields):
        return False
    append_event(session, job_id, message, level=level, data={"status": to, **(data or {})})
    if to in states.TERMINAL:
        record_job_event(session, session.get(Job, job_id, populate_existing=True))
    return True
