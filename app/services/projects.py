"""Projects (tenants): created by the operator, each with its API keys (app.services.keys) and, where
the operator set them, overrides of the default quotas (app.services.quotas)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Project
from app.ids import new_id


def get_project(session: Session, name: str) -> Project | None:
    return session.scalar(select(Project).where(Project.name == name))


def get_or_create_project(session: Session, name: str) -> Project:
    project = get_project(session, name)
    if project is None:
        project = Project(id=new_id("proj"), name=name, quotas={})
        session.add(project)
        session.flush()
    return project
