"""Typed dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.engine import get_session
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
