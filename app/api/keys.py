"""API keys of the caller's project, for admin keys: create (shown once), list, retrieve, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminDep, SessionDep
from app.api.presenters import key_object
from app.db.engine import after_commit
from app.db.models import now
from app.errors import ApiError
from app.schemas.common import ListPage, page_of
from app.schemas.keys import CreatedKey, KeyCreate, KeyObject, RevokedKey
from app.services import keys as service
from app.services.quotas import check_api_keys

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", response_model=CreatedKey)
def create_key(body: KeyCreate, session: SessionDep, caller: AdminDep) -> CreatedKey:
    """A new key of the project, shown in this answer only (only its hash is stored)."""
    check_api_keys(session, caller.project)
    expires_at = now() + body.expires_in_s if body.expires_in_s else None
    row, key = service.issue_key(session, caller.project, scope=body.scope, name=body.name, expires_at=expires_at)
    return CreatedKey(**key_object(row).model_dump(), value=key)


@router.get("", response_model=ListPage[KeyObject])
def list_keys(session: SessionDep, caller: AdminDep, after: str | None = None,
              limit: Annotated[int, Query(ge=1, le=100)] = 20):
    """The project's keys, newest first (revoked ones too), by their last four characters."""
    return page_of(service.list_keys(session, caller.project.id, after, limit), limit, key_object)


@router.get("/{key_id}", response_model=KeyObject)
def get_key(key_id: str, session: SessionDep, caller: AdminDep) -> KeyObject:
    """The key, by its last four characters."""
    return key_object(service.get_key(session, caller.project.id, key_id))


@router.delete("/{key_id}", response_model=RevokedKey)
def revoke_key(key_id: str, session: SessionDep, caller: AdminDep) -> RevokedKey:
    """Revoke a key: refused from then on by this API process, and by every other one within
    FT_AUTH_CACHE_S."""
    row = service.get_key(session, caller.project.id, key_id)
    if row.revoked_at is None and row.scope == "admin" and \
            service.active_keys(session, caller.project.id, scope="admin") <= 1:
        raise ApiError(409, "This is the project's last admin key; create another admin key first, or ask the "
                            "operator (`finetune keys revoke`).", param="key_id", code="last_admin_key")
    row = service.revoke(session, row)
    # Forgotten once revoked for good: a lookup racing the commit must not remember the key as valid.
    after_commit(session, lambda: service.forget(row.id))
    return RevokedKey(id=row.id, revoked_at=row.revoked_at)
