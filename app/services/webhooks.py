"""Webhook endpoints of a project, the API's verbs: register (an http(s) URL whose host is not on the
operator's own network — app.webhooks.outbound — at most ``FT_QUOTA_WEBHOOK_ENDPOINTS`` per project), list,
retrieve, delete. What is sent to them is written by app.jobs.notifications and delivered, signed, by
app.webhooks.delivery."""

from __future__ import annotations

import httpx
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.models import Project, WebhookDelivery, WebhookEndpoint
from app.errors import bad_request, not_found, over_quota
from app.jobs.notifications import EVENT_TYPES, prefixed_id
from app.services import quotas
from app.services.keys import ProjectRef
from app.webhooks import outbound
from app.webhooks.signing import new_secret

MAX_URL_CHARS = 2000


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
    endpoint = WebhookEndpoint(id=prefixed_id("whep"), project_id=project.id, url=url, secret=new_secret(),
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
