from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.deps import SettingsDep
from app.db.engine import get_engine
from app.storage import get_storage

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Prometheus exposition of this process's counters and gauges."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/readyz")
def readyz(settings: SettingsDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc}"
    if settings.serve_mode == "all":  # serving replicas never enqueue, so they need no broker
        try:
            from worker.celery_app import celery_app

            with celery_app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=3)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"error: {exc}"
    try:
        get_storage().check()
        checks["storage"] = "ok"
    except Exception as exc:  # a local disk or an object store: either may fail in its own way
        checks["storage"] = f"error: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503)
