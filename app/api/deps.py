"""Typed dependencies shared by the routers."""

from __future__ import annotations

import threading
from typing import Annotated

from cachetools import TTLCache
from fastapi import Depends, Header
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.engine import get_session, session_scope
from app.db.models import Project
from app.errors import ApiError
from app.services.projects import project_for_key
from app.storage import LocalStorage, get_storage

# scope="function": the transaction commits when the handler returns, before the response is sent, so a
# client that gets a 200 can immediately read what it just created (read-your-writes across requests).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[LocalStorage, Depends(get_storage)]


def current_project(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Project:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise ApiError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key")
    project = project_for_key(session, authorization[7:].strip())
    if project is None:
        raise ApiError(401, "Invalid API key.", code="invalid_api_key")
    return project


ProjectDep = Annotated[Project, Depends(current_project, scope="function")]


# Prediction traffic authenticates every request; a key's project is remembered this long, so that
# a revoked key stops working on serving replicas within this many seconds.
SERVING_AUTH_TTL_S = 10.0
_serving_keys: TTLCache = TTLCache(maxsize=10_000, ttl=SERVING_AUTH_TTL_S)
_serving_keys_lock = threading.Lock()  # TTLCache is not thread-safe; dependencies run in a thread pool


async def serving_project(authorization: Annotated[str | None, Header()] = None) -> Project:
    """The key's project, looked up in a session of its own that closes at once (prediction requests
    wait on the model for a while and must not hold a database connection meanwhile), and remembered
    briefly so that a stream of predictions does not query the database each time."""
    with _serving_keys_lock:
        cached = _serving_keys.get(authorization) if authorization else None
    if cached is not None:
        return cached
    project = await run_in_threadpool(_project_for, authorization)
    with _serving_keys_lock:
        _serving_keys[authorization] = project
    return project


def _project_for(authorization: str | None) -> Project:
    with session_scope() as session:
        project = current_project(session, authorization)
        session.expunge(project)
    return project


ServingProjectDep = Annotated[Project, Depends(serving_project)]
