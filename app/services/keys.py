"""API keys: who a request comes from and what it may do.

A key belongs to one project (tenant) and carries a scope: ``predict`` (predictions, completions,
reading models), ``train`` (also files, jobs, models and webhooks) or ``admin`` (also keys). Each scope
includes the ones before it. Keys are stored as SHA-256 hashes, shown in clear once, when created, and
listed by their last four characters. A key may expire; a revoked or expired key is refused.

An API process remembers a key's caller for ``FT_AUTH_CACHE_S`` so that the hot path (predictions,
job polling) does not query the database on every request. Revoking a key forgets it at once in the
process that revoked it; every other process stops accepting it within ``FT_AUTH_CACHE_S``."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.engine import session_scope
from app.db.models import ApiKey, Project, now
from app.errors import ApiError, not_found
from app.ids import new_id, random_token

SCOPES = ("predict", "train", "admin")  # each includes the ones before it
KEY_PREFIX = "sk-ft-"
BOOTSTRAP_KEY_NAME = "bootstrap"


@dataclass(frozen=True)
class ProjectRef:
    """The project a request acts for, as services need it: its id, and the operator's quota overrides."""

    id: str
    name: str
    quotas: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Caller:
    key_id: str
    scope: str
    expires_at: int | None
    project: ProjectRef

    def allows(self, needed: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)

    def expired(self, at: float | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (time.time() if at is None else at)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ApiError(400, f"scope must be one of: {', '.join(SCOPES)} (got '{scope}').", param="scope",
                       code="invalid_scope")
    return scope


def issue_key(session: Session, project: Project | ProjectRef, *, scope: str = "admin", name: str = "",
              expires_at: int | None = None, key: str | None = None) -> tuple[ApiKey, str]:
    """A new key for ``project`` (or ``key`` itself, e.g. the operator's bootstrap key); returns the row and
    the key in clear, which is never stored. Registering a key that exists already returns that row."""
    key = key or f"{KEY_PREFIX}{random_token(40)}"
    existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if existing is not None:
        return existing, key
    row = ApiKey(id=new_id("key"), project_id=project.id, key_hash=hash_key(key), display_prefix=key[:10],
                 last4=key[-4:], name=name[:200], scope=check_scope(scope), expires_at=expires_at,
                 created_at=now())
    session.add(row)
    session.flush()
    return row, key


def active_keys(session: Session, project_id: str, scope: str | None = None) -> int:
    query = select(func.count(ApiKey.id)).where(ApiKey.project_id == project_id, ApiKey.revoked_at.is_(None),
                                                 (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > now()))
    if scope is not None:
        query = query.where(ApiKey.scope == scope)
    return int(session.scalar(query) or 0)


def any_key_exists(session: Session) -> bool:
    return session.scalar(select(ApiKey.id).limit(1)) is not None


def get_key(session: Session, project_id: str, key_id: str) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None or row.project_id != project_id:
        raise not_found("api_key", key_id, "key_id")
    return row


def list_keys(session: Session, project_id: str, after: str | None, limit: int) -> list[ApiKey]:
    query = select(ApiKey).where(ApiKey.project_id == project_id)
    if after:
        query = query.where(ApiKey.id < get_key(session, project_id, after).id)
    return list(session.scalars(query.order_by(ApiKey.id.desc()).limit(limit + 1)))


def revoke(session: Session, row: ApiKey) -> ApiKey:
    """Marks the key revoked; once that commits, call :func:`forget` so this process drops it at once."""
    if row.revoked_at is None:
        row.revoked_at = now()
        session.flush()
    return row


def revoke_other_bootstrap_keys(session: Session, project_id: str, current_hash: str) -> int:
    """A changed FT_BOOTSTRAP_API_KEY replaces the previous one: the old bootstrap keys are revoked."""
    result = session.execute(update(ApiKey).where(ApiKey.project_id == project_id,
                                                  ApiKey.name == BOOTSTRAP_KEY_NAME,
                                                  ApiKey.key_hash != current_hash, ApiKey.revoked_at.is_(None))
                             .values(revoked_at=now()).execution_options(synchronize_session=False))
    return result.rowcount


def find_caller(session: Session, key: str) -> Caller | None:
    """The caller holding ``key``, from the database; None for an unknown or revoked key."""
    row = session.execute(select(ApiKey, Project).join(Project, Project.id == ApiKey.project_id)
                          .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))).one_or_none()
    if row is None:
        return None
    key_row, project = row
    return Caller(key_row.id, key_row.scope, key_row.expires_at,
                  ProjectRef(project.id, project.name, dict(project.quotas or {})))


# --- the process's memory of keys ---------------------------------------------------------------------

_remembered: TTLCache | None = None
_remembered_lock = threading.Lock()  # TTLCache is not thread-safe; lookups run in a thread pool
# Bumped by every forget(): a lookup that read the database before a revocation committed must not
# remember its (now stale) answer after the revoking request has forgotten the key.
_generation = 0


def _cache() -> TTLCache | None:
    global _remembered
    ttl = get_settings().auth_cache_s
    if ttl <= 0:
        return None
    if _remembered is None or _remembered.ttl != ttl:
        _remembered = TTLCache(maxsize=10_000, ttl=ttl)
    return _remembered


def remembered(key: str) -> Caller | None:
    """The caller of ``key`` if this process looked it up recently (no database round trip)."""
    with _remembered_lock:
        cache = _cache()
        return cache.get(hash_key(key)) if cache is not None else None


def authenticate(key: str) -> Caller | None:
    """The caller holding ``key`` (None: unknown or revoked), remembered for FT_AUTH_CACHE_S. Unknown
    keys are not remembered: a client trying random keys cannot fill the memory."""
    caller = remembered(key)
    if caller is not None:
        return caller
    with _remembered_lock:
        generation = _generation
    with session_scope() as session:
        caller = find_caller(session, key)
    if caller is not None:
        with _remembered_lock:
            cache = _cache()
            if cache is not None and generation == _generation:
                cache[hash_key(key)] = caller
    return caller


def forget(key_id: str | None = None) -> None:
    """Drop a revoked key (or, with no id, every key) from this process's memory."""
    global _generation
    with _remembered_lock:
        _generation += 1
        cache = _cache()
        if cache is None:
            return
        for digest in [d for d, c in cache.items() if key_id is None or c.key_id == key_id]:
            cache.pop(digest, None)
