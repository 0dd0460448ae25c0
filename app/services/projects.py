"""Projects (tenants) and their API keys. A key is shown once and stored as a SHA-256 hash."""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKey, Project
from app.ids import new_id, random_token


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(id=new_id("proj"), name=name)
        session.add(project)
        session.flush()
    return project


def add_key(session: Session, project: Project, key: str | None = None, name: str = "") -> str:
    """Register ``key`` (or a new random one) for ``project``; returns the key in clear, once."""
    key = key or f"sk-ft-{random_token(40)}"
    if session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key))) is None:
        session.add(ApiKey(id=new_id("key"), project_id=project.id, key_hash=hash_key(key),
                           display_prefix=key[:10], name=name))
        session.flush()
    return key


def project_for_key(session: Session, key: str) -> Project | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))
    return session.get(Project, row.project_id) if row else None


def any_key_exists(session: Session) -> bool:
    return session.scalar(select(ApiKey.id).limit(1)) is not None
