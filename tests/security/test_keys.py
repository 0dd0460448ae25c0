"""Finding 9: keys could not be revoked (no code ever set revoked_at), a changed FT_BOOTSTRAP_API_KEY
left the old key valid, and every key could do everything. Now keys are created, listed (last four
characters), revoked and may expire, over the API (admin keys) and the `finetune keys` commands;
scopes separate predict / train / admin; revocation reaches every API process within FT_AUTH_CACHE_S."""

from __future__ import annotations

import time


KEYS = "/v1/keys"


def test_an_admin_key_creates_lists_and_revokes_keys(pg_stack, tenants):
    with pg_stack.client(tenants.b) as admin:
        created = admin.post(KEYS, json={"name": "ci", "scope": "train"}).json()
        assert created["value"].startswith("sk-ft-") and created["scope"] == "train"
        assert created["redacted_value"] == f"sk-ft-…{created['value'][-4:]}"
        listed = admin.get(KEYS).json()["data"]
        assert created["id"] in [k["id"] for k in listed]
        assert all("value" not in k for k in listed), "a listing must never show a key"
        with pg_stack.client(created["value"]) as new:
            assert new.get("/v1/files").status_code == 200
            revoked = admin.delete(f"{KEYS}/{created['id']}")
            assert revoked.status_code == 200 and revoked.json()["revoked_at"]
            # The API process that revoked it refuses it at once.
            refused = new.get("/v1/files")
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert admin.get(f"{KEYS}/{created['id']}").json()["revoked_at"]


def test_a_predict_key_predicts_and_reads_models_but_changes_nothing(pg_stack, tenants):
    with pg_stack.client(tenants.a_predict) as c:
        assert c.get("/v1/models").status_code == 200
        # Allowed by its scope: the 404 is about the model, not the key.
        assert c.post("/v1/models/ft:tiny/bert::nope/predict", json={"inputs": "hi"}).status_code == 404
        for method, path in (("DELETE", "/v1/models/ft:tiny/bert::nope"), ("GET", "/v1/models/ft:x::y/download"),
                             ("GET", "/v1/files"), ("GET", "/v1/fine_tuning/jobs"), ("POST", "/v1/webhooks"),
                             ("GET", KEYS), ("POST", KEYS)):
            response = c.request(method, path, json={} if method == "POST" else None)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["code"] == "insufficient_scope"


def test_a_train_key_cannot_manage_keys(pg_stack, tenants):
    with pg_stack.client(tenants.a) as admin:
        train = admin.post(KEYS, json={"scope": "train"}).json()["value"]
    with pg_stack.client(train) as c:
        assert c.get("/v1/fine_tuning/jobs").status_code == 200
        assert c.post(KEYS, json={"scope": "admin"}).status_code == 403


def test_the_last_admin_key_of_a_project_cannot_be_revoked_over_the_api(pg_stack, project):
    _, key = project
    with pg_stack.client(key) as admin:
        own = next(k for k in admin.get(KEYS).json()["data"] if k["scope"] == "admin")
        response = admin.delete(f"{KEYS}/{own['id']}")
        assert response.status_code == 409 and response.json()["error"]["code"] == "last_admin_key"


def test_a_key_stops_working_when_it_expires(pg_stack, project):
    name, _ = project
    key = pg_stack.cli("keys", "create", "--project", name, "--scope", "train",
                       "--expires-in-days", str(3 / 86400)).strip()
    with pg_stack.client(key) as c:
        assert c.get("/v1/files").status_code == 200
        time.sleep(3.5)
        response = c.get("/v1/files")
        assert response.status_code == 401 and response.json()["error"]["code"] == "expired_api_key"


def test_a_key_revoked_by_another_process_stops_working_within_the_cache_time(pg_stack, project):
    """The operator revokes from the command line (another process than the API, as a control plane is
    to a serving replica): the API stops accepting the key within FT_AUTH_CACHE_S (2 s in this stack)."""
    name, key = project
    listing = pg_stack.cli("keys", "list", "--project", name)
    assert f"sk-ft-…{key[-4:]}" in listing and key not in listing
    key_id = listing.split()[0]
    with pg_stack.client(key) as c:
        assert c.get("/v1/files").status_code == 200  # remembered by the API from now on
        pg_stack.cli("keys", "revoke", key_id)
        revoked_at = time.monotonic()
        while c.get("/v1/files").status_code == 200:
            assert time.monotonic() - revoked_at < float(pg_stack.env["FT_AUTH_CACHE_S"]) + 1.5
            time.sleep(0.2)
        assert c.get("/v1/files").json()["error"]["code"] == "invalid_api_key"


def test_a_changed_bootstrap_key_revokes_the_previous_one(quiet_stack):
    old = quiet_stack.key
    with quiet_stack.client() as c:
        assert c.get("/v1/files").status_code == 200
    quiet_stack.stop_api()
    quiet_stack.key = quiet_stack.env["FT_BOOTSTRAP_API_KEY"] = "sk-live-rotated-bootstrap-key"
    with quiet_stack.running():
        with quiet_stack.client(old) as c:
            assert c.get("/v1/files").status_code == 401
        with quiet_stack.client() as c:
            assert c.get("/v1/files").status_code == 200
