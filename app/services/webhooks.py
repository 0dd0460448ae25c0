"""Webhooks: a project's endpoints, the outbox, and message signing.

* :func:`create_endpoint` registers a receiver: an http(s) URL whose host is not on the operator's own
  network (see :mod:`app.services.outbound`), at most ``FT_QUOTA_WEBHOOK_ENDPOINTS`` per project.
* :func:`record_job_event` writes one ``WebhookDelivery`` row per subscribed endpoint in the *caller's*
  transaction, so a job's terminal state and its notifications commit (or roll back) together. It never
  touches the network.
* Delivery — the dispatcher that empties the outbox — is :mod:`app.services.webhook_delivery`.

Messages are signed as Standard Webhooks specifies: headers ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the base64-decoded
part of the ``whsec_…`` secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from typing import Any

import httpx
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.models import Job, Project, WebhookDelivery, WebhookEndpoint
from app.errors import bad_request, not_found, over_quota
from app.ids import new_id
from app.services import outbound, quotas
from app.services.keys import ProjectRef

log = logging.getLogger(__name__)

EVENT_TYPES: tuple[str, ...] = ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled")
_TERMINAL = ("succeeded", "failed", "cancelled")

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
MAX_BACKOFF_S = 3600.0
MAX_URL_CHARS = 2000


def _prefixed_id(prefix: str) -> str:
    # new_id's time-ordered body, with the underscore these ids use (whep_…, msg_…).
    return new_id(prefix).replace("-", "_", 1)


# --- signing -------------------------------------------------------------------------------------------

def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def backoff_s(attempts: int, base: float) -> float:
    """Wait after the ``attempts``-th failed attempt: base, 2·base, 4·base, … capped at one hour."""
    return min(base * 2 ** max(attempts - 1, 0), MAX_BACKOFF_S)


# --- endpoints (the API's verbs) -----------------------------------------------------------------------

def _check_url(url: str, settings: Settings) -> str:
    """The URL to store, or a 400 naming ``url`` and saying what to change."""
    url = url.strip()
    if len(url) > MAX_URL_CHARS:  # before parsing or resolving it
        raise bad_request(f"The webhook URL is longer than {MAX_URL_CHARS} characters.", param="url",
                          code="invalid_url")
    # Parsed as httpx parses it when delivering, so the host checked here is the host delivery resolves.
    try:
        parsed, problem = httpx.URL(url), ""
    except (httpx.InvalidURL, ValueError) as exc:
        parsed, problem = None, f" ({outbound.printable(str(exc), 200)})"
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise bad_request(f"'{outbound.printable(url, 200)}' is not a usable webhook URL{problem}: give an absolute "
                          "http:// or https:// URL with a host, e.g. https://example.com/hooks/finetune.",
                          param="url", code="invalid_url")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise bad_request(f"The webhook URL's port {port} is out of range: give a port from 1 to 65535.",
                          param="url", code="invalid_url")
    allowed = outbound.allowed_networks(tuple(settings.webhook_allowed_networks))
    refusal = outbound.registration_refusal(parsed.raw_host.decode("ascii"), port, allowed)
    if refusal:
        raise bad_request(f"The webhook URL cannot be used: {refusal}", param="url", code="invalid_url")
    return url


def _check_events(events: list[str] | None) -> list[str]:
    if events is None:
        return list(EVENT_TYPES)
    for event in events:
        if event not in EVENT_TYPES:
            raise bad_request(f"Unknown event type '{event}'; the events on offer are: {', '.join(EVENT_TYPES)}.",
                              param="events", code="invalid_event_type")
    if not events:
        raise bad_request("'events' is empty: name at least one event, or leave it out to receive all of them "
                          f"({', '.join(EVENT_TYPES)}).", param="events", code="invalid_value")
    return list(dict.fromkeys(events))


def _enforce_endpoint_quota(session: Session, project: ProjectRef, settings: Settings, *, with_new: bool) -> None:
    allowed = quotas.limit(project, "webhook_endpoints", settings)
    count = session.scalar(select(func.count(WebhookEndpoint.id)).where(WebhookEndpoint.project_id == project.id))
    existing = count - 1 if with_new else count
    if existing >= allowed:
        raise over_quota(f"This project has {existing} webhook endpoints, its limit of {allowed:g}. Delete one it "
                         f"no longer needs (DELETE /v1/webhooks/{{id}}) before adding another. {quotas.HOW_TO_RAISE}",
                         "url")


def create_endpoint(session: Session, project: ProjectRef, url: str, events: list[str] | None = None,
                    description: str | None = None) -> WebhookEndpoint:
    settings = get_settings()
    description = description or ""
    if len(description) > 500:
        raise bad_request("'description' is longer than 500 characters.", param="description")
    # Every job event fans out to each endpoint, so a project's endpoints are bounded. Checked first, before
    # the URL check resolves the host, and again once the row is written: the project row is locked
    # (PostgreSQL) and SQLite serialises writers, so two registrations at once cannot both slip under the cap.
    _enforce_endpoint_quota(session, project, settings, with_new=False)
    url, events = _check_url(url, settings), _check_events(events)  # no lock is held while resolving
    session.execute(select(Project.id).where(Project.id == project.id).with_for_update())
    endpoint = WebhookEndpoint(id=_prefixed_id("whep"), project_id=project.id, url=url, secret=new_secret(),
                               events=events, description=description)
    session.add(endpoint)
    session.flush()
    _enforce_endpoint_quota(session, project, settings, with_new=True)
    return endpoint


def get_endpoint(session: Session, project: ProjectRef, endpoint_id: str, param: str | None = None) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.project_id != project.id:
        raise not_found("webhook_endpoint", endpoint_id, param)
    return endpoint


def list_endpoints(session: Session, project: ProjectRef, after: str | None, limit: int) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.project_id == project.id)
    if after:
        query = query.where(WebhookEndpoint.id < get_endpoint(session, project, after, "after").id)
    return list(session.scalars(query.order_by(WebhookEndpoint.id.desc()).limit(limit + 1)))


def delete_endpoint(session: Session, project: ProjectRef, endpoint_id: str) -> None:
    endpoint = get_endpoint(session, project, endpoint_id)
    # The foreign key cascades too; deleting explicitly does not depend on the database enforcing it.
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
                    .execution_options(synchronize_session=False))
    session.delete(endpoint)
    session.flush()


# --- the outbox ----------------------------------------------------------------------------------------

def record_job_event(session: Session, job: Job) -> None:
    """Queue ``fine_tuning.job.<status>`` for every endpoint of the job's project subscribed to it.

    Call it in the transaction that made the job terminal, with ``job`` showing the new status (after
    ``st.move``, which updates SQL only, ``session.refresh(job)`` first). Adds rows; never commits, never
    does network I/O. A job that is not terminal is logged and ignored."""
    if job.status not in _TERMINAL:
        log.warning("record_job_event: job %s is %s, not terminal; no webhook queued", job.id, job.status)
        return
    event_type = f"fine_tuning.job.{job.status}"
    endpoints = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.project_id == job.project_id))
    created_at = int(time.time())
    for endpoint in endpoints:
        if event_type not in (endpoint.events or []):
            continue
        msg_id = _prefixed_id("msg")
        payload: dict[str, Any] = {
            "id": msg_id, "object": "event", "type": event_type, "created_at": created_at,
            "data": {"id": job.id, "status": job.status, "fine_tuned_model": job.fine_tuned_model,
                     "error": job.error},
        }
        session.add(WebhookDelivery(id=msg_id, endpoint_id=endpoint.id, event_type=event_type, payload=payload,
                                    status=PENDING, attempts=0, next_attempt_at=time.time(),
                                    created_at=created_at))
    session.flush()
