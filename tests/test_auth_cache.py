"""The API process remembers keys (app.services.keys) so that a request is authenticated without a
database round trip; a revoked key stops working at once in the process that revoked it, and in every
other process within FT_AUTH_CACHE_S (here simulated by a revocation written to the database directly,
as `finetune keys revoke` or another API process does)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import event, update

from app.config import get_settings
from app.db.engine import after_commit, get_engine, session_scope
from app.db.models import ApiKey, now
from app.services import keys


@pytest.fixture()
def short_memory(monkeypatch):
    monkeypatch.setattr(get_settings(), "auth_cache_s", 1.0)
    keys.forget()
    yield 1.0
    keys.forget()


def _new_key(client, scope: str = "train") -> dict:
    created = client.post("/v1/keys", json={"name": "cache", "scope": scope})
    assert created.status_code == 200, created.text
    return created.json()


class Statements:
    def __init__(self):
        self.seen: list[str] = []

    def __enter__(self):
        event.listen(get_engine(), "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc):
        event.remove(get_engine(), "before_cursor_execute", self._record)

    def _record(self, conn, cursor, statement, *args):
        self.seen.append(statement)


def test_a_remembered_key_costs_no_query(client):
    job_list = client.get("/v1/fine_tuning/jobs")  # the first request looks the key up
    assert job_list.status_code == 200
    with Statements() as statements:
        for _ in range(20):
            assert client.get("/v1/fine_tuning/jobs").status_code == 200
    assert not [s for s in statements.seen if "api_keys" in s], "a remembered key was looked up again"
    assert len(statements.seen) == 20  # the listing's own query, nothing else


def test_a_key_revoked_over_the_api_is_refused_at_once_by_this_process(client, app):
    from fastapi.testclient import TestClient

    created = _new_key(client)
    with TestClient(app) as holder:
        holder.headers["Authorization"] = f"Bearer {created['value']}"
        assert holder.get("/v1/files").status_code == 200  # remembered from now on
        assert client.delete(f"/v1/keys/{created['id']}").status_code == 200
        refused = holder.get("/v1/files")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def test_a_key_revoked_elsewhere_is_refused_within_the_memory_time(client, app, short_memory):
    from fastapi.testclient import TestClient

    created = _new_key(client)
    with TestClient(app) as holder:
        holder.headers["Authorization"] = f"Bearer {created['value']}"
        assert holder.get("/v1/files").status_code == 200
        with session_scope() as session:  # another process's revocation: this one is not told
            session.execute(update(ApiKey).where(ApiKey.id == created["id"]).values(revoked_at=now()))
        revoked_at = time.monotonic()
        while holder.get("/v1/files").status_code == 200:
            assert time.monotonic() - revoked_at < short_memory + 0.5, "still accepted past FT_AUTH_CACHE_S"
            time.sleep(0.05)
        assert holder.get("/v1/files").json()["error"]["code"] == "invalid_api_key"


def test_a_lookup_racing_a_revocation_does_not_remember_the_key(client):
    """The lookup reads the key row; the revocation commits and forgets the key; then the lookup would
    store what it read. It must not, or the revoking process would accept the key for FT_AUTH_CACHE_S."""
    created = _new_key(client)
    keys.forget()
    revoked = []

    def revoke_right_after_the_read(conn, cursor, statement, *args):
        if "FROM api_keys" in statement and not revoked:
            revoked.append(True)
            with session_scope() as session:
                keys.revoke(session, session.get(ApiKey, created["id"]))
                after_commit(session, lambda: keys.forget(created["id"]))

    event.listen(get_engine(), "after_cursor_execute", revoke_right_after_the_read)
    try:
        raced = keys.authenticate(created["value"])
    finally:
        event.remove(get_engine(), "after_cursor_execute", revoke_right_after_the_read)
    assert revoked and raced is not None  # it read the key while it was still valid
    assert keys.remembered(created["value"]) is None
    assert keys.authenticate(created["value"]) is None


def test_unknown_keys_are_not_remembered(client):
    response = client.get("/v1/files", headers={"Authorization": "Bearer sk-ft-not-a-key"})
    assert response.status_code == 401
    assert keys.remembered("sk-ft-not-a-key") is None
