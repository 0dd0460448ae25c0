"""Webhooks: a project's endpoints, the outbox, and the dispatcher that empties it.

* :func:`record_job_event` writes one ``WebhookDelivery`` row per subscribed endpoint in the *caller's*
  transaction, so a job's terminal state and its notifications commit (or roll back) together. It never
  touches the network.
* :func:`deliver_due` does one delivery pass: each due row is claimed with a conditional UPDATE (two API
  replicas never send one message twice), POSTed without holding a session, and its outcome recorded.
* :class:`WebhookDispatcher` runs :func:`deliver_due` in a daemon thread every ``FT_WEBHOOK_POLL_S``.

Messages are signed as Standard Webhooks specifies: headers ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the base64-decoded
part of the ``whsec_…`` secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.engine import session_scope
from app.db.models import Job, Project, WebhookDelivery, WebhookEndpoint
from app.errors import bad_request, not_found
from app.ids import new_id

log = logging.getLogger(__name__)

EVENT_TYPES: tuple[str, ...] = ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled")
_TERMINAL = ("succeeded", "failed", "cancelled")

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# A claimed delivery is invisible to other dispatchers this long; far above the HTTP timeout, so it only
# matters when a dispatcher dies mid-send (the message is then retried: at-least-once delivery).
CLAIM_S = 60.0
HTTP_TIMEOUT_S = 10.0
MAX_BACKOFF_S = 3600.0
_BATCH = 100


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

def _check_url(url: str) -> str:
    url = url.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        host = None
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise bad_request(f"'{url}' is not a usable webhook URL: give an absolute http:// or https:// URL "
                          "with a host, e.g. https://example.com/hooks/finetune.", param="url", code="invalid_url")
    if len(url) > 2000:
        raise bad_request("The webhook URL is longer than 2000 characters.", param="url", code="invalid_url")
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


def create_endpoint(session: Session, project: Project, url: str, events: list[str] | None = None,
                    description: str | None = None) -> WebhookEndpoint:
    description = description or ""
    if len(description) > 500:
        raise bad_request("'description' is longer than 500 characters.", param="description")
    endpoint = WebhookEndpoint(id=_prefixed_id("whep"), project_id=project.id, url=_check_url(url),
                               secret=new_secret(), events=_check_events(events), description=description)
    session.add(endpoint)
    session.flush()
    return endpoint


def get_endpoint(session: Session, project: Project, endpoint_id: str, param: str | None = None) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.project_id != project.id:
        raise not_found("webhook_endpoint", endpoint_id, param)
    return endpoint


def list_endpoints(session: Session, project: Project, after: str | None, limit: int) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.project_id == project.id)
    if after:
        query = query.where(WebhookEndpoint.id < get_endpoint(session, project, after, "after").id)
    return list(session.scalars(query.order_by(WebhookEndpoint.id.desc()).limit(limit + 1)))


def delete_endpoint(session: Session, project: Project, endpoint_id: str) -> None:
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


# --- delivery ------------------------------------------------------------------------------------------

def _claim(delivery_id: str, now: float) -> tuple[str, str, dict[str, Any], int] | None:
    """Take one due delivery for this dispatcher; None when another one got it first (or it is not due)."""
    with session_scope() as session:
        claimed = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING,
                   WebhookDelivery.next_attempt_at <= now)
            .values(next_attempt_at=now + CLAIM_S)
            .execution_options(synchronize_session=False)
        ).rowcount == 1
        if not claimed:
            return None
        row = session.execute(
            select(WebhookEndpoint.url, WebhookEndpoint.secret, WebhookDelivery.payload, WebhookDelivery.attempts)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(WebhookDelivery.id == delivery_id)
        ).one_or_none()
        return tuple(row) if row else None  # type: ignore[return-value]


def _send(client: httpx.Client, url: str, secret: str, msg_id: str, payload: dict[str, Any]) -> str | None:
    """POST one message; None on a 2xx answer, else why it failed."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(secret, msg_id, timestamp, body)}
    try:
        with client.stream("POST", url, content=body, headers=headers) as response:
            if 200 <= response.status_code < 300:
                return None
            snippet = b""
            for chunk in response.iter_bytes():
                snippet += chunk
                if len(snippet) >= 200:
                    break
            text = snippet[:200].decode(errors="replace").strip()
            return f"HTTP {response.status_code}" + (f": {text}" if text else "")
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:1000] or type(exc).__name__


def _record(delivery_id: str, attempts: int, error: str | None, now: float, settings: Settings) -> None:
    attempts += 1
    if error is None:
        values: dict[str, Any] = {"status": DELIVERED, "attempts": attempts, "delivered_at": int(time.time()),
                                  "last_error": None}
    elif attempts >= settings.webhook_max_attempts:
        values = {"status": FAILED, "attempts": attempts, "last_error": error}
    else:
        values = {"attempts": attempts, "last_error": error,
                  "next_attempt_at": now + backoff_s(attempts, settings.webhook_backoff_s)}
    with session_scope() as session:
        session.execute(update(WebhookDelivery)
                        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING)
                        .values(**values).execution_options(synchronize_session=False))
    if error is None:
        log.info("webhook %s delivered (attempt %d)", delivery_id, attempts)
    else:
        log.warning("webhook %s attempt %d failed: %s%s", delivery_id, attempts, error,
                    " (giving up)" if values.get("status") == FAILED else "")


def deliver_due(now: float | None = None, *, settings: Settings | None = None,
                stop: threading.Event | None = None) -> int:
    """One pass over the outbox: send every pending delivery due at ``now`` (default: the clock).

    Returns how many were attempted (claimed and POSTed) by this call. Errors of one delivery are logged
    and do not stop the others."""
    settings = settings or get_settings()
    now = time.time() if now is None else now
    with session_scope() as session:
        due = list(session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at).limit(_BATCH)))
    if not due:
        # An HTTP client loads its TLS context (~30 ms of CPU): once a second, in every API replica, that
        # was the idle service's largest cost, taken from training jobs sharing the machine.
        return 0
    attempted = 0
    with httpx.Client(timeout=HTTP_TIMEOUT_S, follow_redirects=False) as client:
        for delivery_id in due:
            if stop is not None and stop.is_set():
                break
            try:
                claimed = _claim(delivery_id, now)
                if claimed is None:
                    continue
                url, secret, payload, attempts = claimed
                error = _send(client, url, secret, delivery_id, payload)
                _record(delivery_id, attempts, error, now, settings)
                attempted += 1
            except Exception:  # a bad row must not block the rest; a claimed one is retried after CLAIM_S
                log.exception("webhook delivery %s failed unexpectedly", delivery_id)
    return attempted


class WebhookDispatcher:
    """Delivers the outbox from a daemon thread. Safe to run in every API replica."""

    def __init__(self, settings: Settings | None = None, poll_s: float | None = None):
        self._settings = settings
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.alive:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="webhook-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = HTTP_TIMEOUT_S + 5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            settings = self._settings or get_settings()
            busy = False
            try:
                busy = deliver_due(settings=settings, stop=self._stop) >= _BATCH
            except Exception:  # e.g. the database is briefly unreachable: log, wait, try again
                log.exception("webhook dispatcher pass failed")
            if not busy:
                self._stop.wait(self._poll_s if self._poll_s is not None else settings.webhook_poll_s)
