"""Webhook endpoints as the API takes and shows them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, description="An http(s) URL on a public address (or one the operator allows).")
    events: list[str] | None = Field(default=None, description="Event types to receive (default: all).")
    description: str | None = None


class WebhookEndpointSummary(BaseModel):
    """An endpoint as listed: without its secret."""

    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str]
    description: str
    created_at: int


class WebhookEndpointObject(WebhookEndpointSummary):
    """An endpoint as created or retrieved by id: with the signing secret (whsec_…)."""

    secret: str
