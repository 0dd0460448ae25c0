"""Health, readiness and metrics: the routes that take no API key. They answer with fixed words, never
with exception texts or paths (those go to the log), and /metrics carries no tenant identifiers."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.deps import SettingsDep
from app.config import Settings
from app.db.engine import get_engine, session_scope
from app.errors import ApiError
from app.jobs import counts, queue
from app.observability import record_job_counts
from app.schemas.operations import Health, Readiness
from app.storage import get_storage

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health()


@router.get("/metrics", include_in_schema=False)
def metrics(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus exposition of this process's counters and gauges; with FT_METRICS_TOKEN set, only for
    a scraper that sends it."""
    if settings.metrics_token and not hmac.compare_digest((authorization or "").encode(),
                                                          f"Bearer {settings.metrics_token}".encode()):
        raise ApiError(401, "GET /metrics needs 'Authorization: Bearer <FT_METRICS_TOKEN>'.", code="invalid_token")
    with _scrape:
        if settings.serve_mode == "all":  # serving replicas answer predictions; the control plane counts jobs
            _count_jobs(settings)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


# Several scrapers (or replicas' health checks) at once read the database at most once a second.
_scrape = threading.Lock()
_counted_at = 0.0
COUNT_EVERY_S = 1.0


def _count_jobs(settings: Settings) -> None:
    """The job gauges from the database; if it cannot be reached, the last counts stay and the log says why
    (the process's other series are still worth a scrape)."""
    global _counted_at
    if time.monotonic() - _counted_at < COUNT_EVERY_S:
        return
    try:
        with session_scope() as session:
            record_job_counts(counts.jobs_by_status(session), counts.queue_depths(session, settings.gpu_queue))
        _counted_at = time.monotonic()
    except Exception:
        log.exception("could not count jobs for /metrics")


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


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(settings: SettingsDep) -> JSONResponse:
    """Whether the database, the broker and storage can be reached (503 when one cannot), in a word each;
    why is in this process's log."""
    checks = {"database": _check("database", _database)}
    if settings.serve_mode == "all":  # serving replicas never enqueue, so they need no broker
        checks["broker"] = _check("broker", queue.ping)
    checks["storage"] = _check("storage", lambda: get_storage().check())
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
