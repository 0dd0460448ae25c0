"""Webhook endpoints of the caller's project. What they receive is written when a job ends
(app.jobs.notifications) and delivered, signed, by app.webhooks.delivery."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import ProjectDep, SessionDep
from app.api.presenters import webhook_object, webhook_summary
from app.schemas.common import Deleted, ListPage, page_of
from app.schemas.webhooks import WebhookCreate, WebhookEndpointObject, WebhookEndpointSummary
from app.services import webhooks as service

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("", response_model=WebhookEndpointObject)
def create_webhook(body: WebhookCreate, session: SessionDep, project: ProjectDep) -> WebhookEndpointObject:
    """Register a receiver for `fine_tuning.job.succeeded/failed/cancelled`; the answer holds the
    `whsec_…` secret its deliveries are signed with (Standard Webhooks)."""
    return webhook_object(service.create_endpoint(session, project, body.url, body.events, body.description))


@router.get("", response_model=ListPage[WebhookEndpointSummary])
def list_webhooks(session: SessionDep, project: ProjectDep, after: str | None = None,
                  limit: Annotated[int, Query(ge=1, le=100)] = 20):
    """The project's endpoints, newest first, without their secrets."""
    return page_of(service.list_endpoints(session, project, after, limit), limit, webhook_summary)


@router.get("/{endpoint_id}", response_model=WebhookEndpointObject)
def get_webhook(endpoint_id: str, session: SessionDep, project: ProjectDep) -> WebhookEndpointObject:
    """The endpoint, with its secret."""
    return webhook_object(service.get_endpoint(session, project, endpoint_id))


@router.delete("/{endpoint_id}", response_model=Deleted)
def delete_webhook(endpoint_id: str, session: SessionDep, project: ProjectDep) -> Deleted:
    """Delete the endpoint and what is still waiting to be delivered to it."""
    service.delete_endpoint(session, project, endpoint_id)
    return Deleted(id=endpoint_id, object="webhook_endpoint")
