"""Health and readiness, as load balancers and orchestrators read them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, Literal["ok", "unavailable"]] = Field(
        description="database, broker (not on serving replicas) and storage; why one is unavailable is in the "
                    "server's log.")
