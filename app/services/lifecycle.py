"""Moving a job to a new status, with its event and (for terminal states) its webhooks, in the
caller's transaction. The API, the worker and the reaper all go through here."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.db import transitions as st
from app.db.events import append_event
from app.db.models import Job, now


def transition(session: Session, job_id: str, frm: str | frozenset[str], to: str, message: str, *,
               level: str = "info", data: dict[str, Any] | None = None, **fields: Any) -> bool:
    if to in st.TERMINAL:
        fields.setdefault("finished_at", now())
    if to != st.RUNNING:
        fields.setdefault("lease_expires_at", None)
    if not st.move(session, job_id, frm, to, **fields):
        return False
    append_event(session, job_id, message, level=level, data={"status": to, **(data or {})})
    if to in st.TERMINAL:
        from app.services.webhooks import record_job_event

        job = session.get(Job, job_id, populate_existing=True)
        record_job_event(session, job)
    return True
