"""A job's notifications: when it ends, one outbox row (``WebhookDelivery``) per endpoint of its project
subscribed to the event, written in the transaction that ended the job — so the terminal state and its
notifications commit, or roll back, together. Nothing here touches the network: the dispatcher
(app.webhooks.delivery) empties the outbox."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job, WebhookDelivery, WebhookEndpoint
from app.ids import new_id
from app.jobs import states

log = logging.getLogger(__name__)

EVENT_TYPES: tuple[str, ...] = tuple(f"fine_tuning.job.{status}" for status in
                                     (states.SUCCEEDED, states.FAILED, states.CANCELLED))
# A delivery's status in the outbox.
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def prefixed_id(prefix: str) -> str:
    """new_id's time-ordered body, with the underscore webhook ids use (``whep_…``, ``msg_…``)."""
    return new_id(prefix).replace("-", "_", 1)


def record_job_event(session: Session, job: Job) -> None:
    """Queue ``fine_tuning.job.<status>`` for every endpoint of the job's project subscribed to it.

    Call it in the transaction that made the job terminal, with ``job`` showing the new status (after
    ``states.move``, which updates SQL only, ``session.refresh(job)`` first). Adds rows; never commits,
    never does network I/O. A job that is not terminal is logged and ignored."""
    if job.status not in states.TERMINAL:
        log.warning("record_job_event: job %s is %s, not terminal; no webhook queued", job.id, job.status)
        return
    if job.kind != "fine_tune":  # evaluations are followed by polling or their event stream
        return
    event_type = f"fine_tuning.job.{job.status}"
    endpoints = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.project_id == job.project_id))
    created_at = int(time.time())
    for endpoint in endpoints:
        if event_type not in (endpoint.events or []):
            continue
        message_id = prefixed_id("msg")
        payload: dict[str, Any] = {
            "id": message_id, "object": "event", "type": event_type, "created_at": created_at,
            "data": {"id": job.id, "status": job.status, "fine_tuned_model": job.fine_tuned_model,
                     "error": job.error},
        }
        session.add(WebhookDelivery(id=message_id, endpoint_id=endpoint.id, event_type=event_type, payload=payload,
                                    status=PENDING, attempts=0, next_attempt_at=time.time(),
                                    created_at=created_at))
    session.flush()
