"""Live job events as Server-Sent Events. Each poll opens a short session and closes it, so a
client following a job for hours holds no database connection; ``id:`` is the event's sequence
number, so a reconnect with ``Last-Event-ID`` replays exactly what was missed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app.db.engine import session_scope
from app.db.models import Job, JobEvent
from app.jobs.states import TERMINAL
from app.schemas.jobs import EventObject
from app.services.quotas import StreamSlot


def _fetch(job_id: str, after_seq: int, limit: int = 500) -> tuple[list[dict], str]:
    with session_scope() as session:
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
                           .order_by(JobEvent.seq).limit(limit)).all()
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        return [EventObject.model_validate(e, from_attributes=True).model_dump() for e in events], status


async def follow(job_id: str, after_seq: int, slot: StreamSlot | None = None,
                 poll_s: float = 0.5) -> AsyncIterator[dict]:
    """The job's events after ``after_seq``, then new ones as they come; ``slot`` (the project's open-stream
    quota) is given back when the stream ends, however it ends."""
    last = after_seq
    try:
        while True:
            events, status = await run_in_threadpool(_fetch, job_id, last)
            for event in events:
                last = event["seq"]
                yield {"id": str(event["seq"]), "data": json.dumps(event)}
                if (event.get("data") or {}).get("status") in TERMINAL:
                    return  # the terminal event is the last one a job writes
            if not events and status in TERMINAL:
                return  # joined after the end and everything was replayed
            if not events:
                await asyncio.sleep(poll_s)
    finally:
        if slot is not None:
            slot.release()
