"""Health, readiness and metrics: the routes that take no API key. They answer with fixed words, never
with exception texts or paths (those go to the log), and /metrics carries no tenant identifiers."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.deps import SettingsDep
from app.db.engine import get_engine
from app.errors import ApiError
from app.storage import get_storage

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
def metrics(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus exposition of this process's counters and gauges; with FT_METRICS_TOKEN set, only for
    a scraper that sends it."""
    if settings.metrics_token and not hmac.compare_digest((authorization or "").encode(),
                                                          f"Bearer {settings.metrics_token}".encode()):
        raise ApiError(401, "GET /metrics needs 'Authorization: Bearer <FT_METRICS_TOKEN>'.", code="invalid_token")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _check(name: str, probe) -> str:
    try:
        probe()
        return "ok"
    except Exception:
        log.exception("readiness check %s failed", name)
        return "unavailable"


def _database() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))


def _broker() -> None:
    from worker.celery_app import celery_app

    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)


@router.get("/readyz")
def readyz(settings: SettingsDep) -> JSONResponse:
    """Which dependency is down, in a word; why is in this process's log."""
    checks = {"database": _check("database", _database)}
    if settings.serve_mode == "all":  # serving replicas never enqueue, so they need no broker
        checks["broker"] = _check("broker", _broker)
    checks["storage"] = _check("storage", lambda: get_storage().check())
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503)
