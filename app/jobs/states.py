"""The job state machine. Every status change goes through :func:`move`, a conditional UPDATE, so two
processes racing on one job (a duplicate delivery, a cancel during a claim) can never both win."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db.models import Job

VALIDATING, QUEUED, RUNNING, PAUSED = "validating_files", "queued", "running", "paused"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"

TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

ALLOWED: dict[str, frozenset[str]] = {
    VALIDATING: frozenset({QUEUED, FAILED, CANCELLED}),
    QUEUED: frozenset({RUNNING, FAILED, CANCELLED, PAUSED}),
    # running → queued is a re-queue after a lost worker; running → paused is a cooperative pause.
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED, QUEUED, PAUSED}),
    PAUSED: frozenset({QUEUED, CANCELLED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


class IllegalTransition(ValueError):
    pass


def move(session: Session, job_id: str, from_status: str | frozenset[str], to: str, **fields: Any) -> bool:
    """Move ``job_id`` from ``from_status`` (one status or a set) to ``to``, setting ``fields`` too.

    Returns False when the job was not in ``from_status`` any more (someone else moved it first)."""
    sources = frozenset({from_status}) if isinstance(from_status, str) else from_status
    for source in sources:
        if to not in ALLOWED[source]:
            raise IllegalTransition(f"{source} → {to} is not a legal job transition")
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(sources))
        .values(status=to, **fields)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1
