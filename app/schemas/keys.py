"""API keys as the API shows them: never the key itself, except once, in the answer that created it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


TEN_YEARS_S = 10 * 365 * 86400


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)
    scope: Literal["predict", "train", "admin"] = Field(
        default="predict", description="predict: predictions, completions and reading models; train: also files, "
                                       "jobs, models and webhooks; admin: also API keys.")
    expires_in_s: int | None = Field(default=None, ge=60, le=TEN_YEARS_S,
                                     description="Seconds until the key stops working (default: never).")


class KeyObject(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    scope: str
    redacted_value: str
    created_at: int
    expires_at: int | None
    revoked_at: int | None


class CreatedKey(KeyObject):
    """The answer to a create: the only time the key itself is shown."""

    value: str


class RevokedKey(BaseModel):
    id: str
    object: Literal["api_key.deleted"] = "api_key.deleted"
    deleted: bool = True
    revoked_at: int
