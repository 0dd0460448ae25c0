"""Webhook endpoints of the caller's project. Deliveries are made by app.services.webhook_delivery."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import ProjectDep, SessionDep
from app.db.models import WebhookEndpoint
from app.schemas.common import Deleted, ListPage, page_of
from app.services import webhooks as service

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)
    events: list[str] | None = None
    description: str | None = None


class WebhookEndpointSummary(BaseModel):
    """An endpoint as listed: without its secret."""

    id: str
    object: str = "webhook_endpoint"
    url: str
    events: list[str]
    description: str
    created_at: int

    @classmethod
    def of(cls, endpoint: WebhookEndpoint):
        return cls(id=endpoint.id, url=endpoint.url, events=list(endpoint.events or []),
                   description=endpoint.description or "", created_at=endpoint.created_at)


class WebhookEndpointObject(WebhookEndpointSummary):
    """An endpoint as created or retrieved by id: with the signing secret (whsec_…)."""

    secret: str

    @classmethod
    def of(cls, endpoint: WebhookEndpoint):
        return cls(**WebhookEndpointSummary.of(endpoint).model_dump(), secret=endpoint.secret)


@router.post("", response_model=WebhookEndpointObject)
def create_webhook(body: WebhookCreate, session: SessionDep, project: ProjectDep) -> WebhookEndpointObject:
    return WebhookEndpointObject.of(service.create_endpoint(session, project, body.url, body.events, body.description))


@router.get("", response_model=ListPage[WebhookEndpointSummary])
def list_webhooks(session: SessionDep, project: ProjectDep, after: str | None = None,
                  limit: Annotated[int, Query(ge=1, le=100)] = 20):
    page = page_of(service.list_endpoints(session, project, after, limit), limit)
    page["data"] = [WebhookEndpointSummary.of(e) for e in page["data"]]
    return page


@router.get("/{endpoint_id}", response_model=WebhookEndpointObject)
def get_webhook(endpoint_id: str, session: SessionDep, project: ProjectDep) -> WebhookEndpointObject:
    return WebhookEndpointObject.of(service.get_endpoint(session, project, endpoint_id))


@router.delete("/{endpoint_id}", response_model=Deleted)
def delete_webhook(endpoint_id: str, session: SessionDep, project: ProjectDep) -> Deleted:
    service.delete_endpoint(session, project, endpoint_id)
    return Deleted(id=endpoint_id, object="webhook_endpoint")
