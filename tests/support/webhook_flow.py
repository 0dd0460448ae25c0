"""Fixtures and steps shared by the webhook tests: settings that let deliveries reach loopback receivers,
receivers closed after each test, registering an endpoint, ending a job, reading its deliveries."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from app.config import get_settings
from app.db.engine import session_scope
from app.db.models import WebhookDelivery
from tests.conftest import EXAMPLES, upload
from tests.support.webhooks import HookServer, Tarpit

HOOKS = "/v1/webhooks"
JOBS = "/v1/fine_tuning/jobs"


def settle_outbox() -> None:
    # Delivery passes work on the whole (shared, in-process) database: leave no pending delivery of
    # another test behind, so that each test's counts are its own.
    with session_scope() as session:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.status == "pending")
                        .values(status="failed", last_error="settled by the test suite"))


@pytest.fixture(autouse=True)
def settings(app, monkeypatch):
    settings = get_settings()
    # The tests drive delivery themselves; the lifespan's thread would race them.
    monkeypatch.setattr(settings, "webhooks_dispatch", False)
    monkeypatch.setattr(settings, "webhook_backoff_s", 5.0)
    monkeypatch.setattr(settings, "webhook_max_attempts", 8)
    # The receivers of these tests listen on 127.0.0.1, which deliveries may reach only when allowed.
    monkeypatch.setattr(settings, "webhook_allowed_networks", ["127.0.0.0/8"])
    settle_outbox()
    yield settings
    settle_outbox()


@pytest.fixture()
def hook_server():
    servers = []

    def make(statuses=(200,), delay_s: float = 0.0, **options) -> HookServer:
        servers.append(HookServer(statuses, delay_s, **options))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


@pytest.fixture()
def tarpit():
    servers = []

    def make(drip_s: float = 0.2) -> Tarpit:
        servers.append(Tarpit(drip_s))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def register(client, url: str, **fields) -> dict:
    response = client.post(HOOKS, json={"url": url, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def cancelled_job(client) -> str:
    """A job of the client's project that has reached a terminal status, with its webhooks queued."""
    file_id = upload(client, EXAMPLES / "sentiment.csv").json()["id"]
    job = client.post(JOBS, json={"model": "tiny/bert", "training_file": file_id}).json()
    cancelled = client.post(f"{JOBS}/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled", cancelled
    return job["id"]


def deliveries(job_id: str) -> list[WebhookDelivery]:
    with session_scope() as session:
        rows = session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))
        return [r for r in rows if r.payload.get("data", {}).get("id") == job_id]
