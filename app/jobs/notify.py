"""Telling the API processes that a job has new events, so their event streams need not poll.

On PostgreSQL, writing an event also runs ``pg_notify`` in the writer's own transaction: PostgreSQL
delivers the notification when that transaction commits, and never if it rolls back. That is exactly
"publish after commit", without a window in which a process could commit and die before publishing, and
it works alike for the API, the reaper and the workers (all write events through
:func:`app.jobs.events.append_event`). Every API process LISTENs on :data:`CHANNEL`
(``app.services.event_bus``).

On SQLite nothing is sent: every process runs on the one machine that holds the database file, and the
API notices another connection's commit from ``PRAGMA data_version``. Either way a notification only
says "look again"; the events themselves are always read from the database.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

CHANNEL = "ft_job_events"


def announce(session: Session, job_id: str) -> None:
    """Wake the followers of ``job_id`` once ``session``'s transaction commits (PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        # Notifications with the same payload in one transaction are folded into one by PostgreSQL.
        session.execute(select(func.pg_notify(CHANNEL, job_id)))
