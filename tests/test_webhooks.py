"""Webhooks: endpoints through the API (validation, project isolation), the outbox written when a job
ends, and signed delivery with retries to a real HTTP server on 127.0.0.1 (allowed for these tests by
FT_WEBHOOK_ALLOWED_NETWORKS; what is refused by default is in test_webhook_safety.py). Signatures are
checked here by recomputing the HMAC from the secret the API returned, not by calling the service's own
signer."""

from __future__ import annotations

import base64
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from app.db.engine import session_scope
from app.db.models import Job
from app.jobs.notifications import record_job_event
from app.webhooks import delivery as webhook_delivery
from app.webhooks import signing
from tests.conftest import EXAMPLES, upload
from tests.support.webhook_flow import HOOKS, JOBS, cancelled_job, deliveries, register
from tests.support.webhook_flow import hook_server, settings  # noqa: F401 - fixtures
from tests.support.webhooks import verify_signed

ALL_EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]


# --- the API ---------------------------------------------------------------------------------------------

def test_create_get_list_delete(client):
    created = register(client, "https://example.com/hooks/ft")
    assert created["id"].startswith("whep_") and created["object"] == "webhook_endpoint"
    assert created["url"] == "https://example.com/hooks/ft" and created["events"] == ALL_EVENTS
    assert created["description"] == "" and isinstance(created["created_at"], int)
    assert created["secret"].startswith("whsec_") and len(base64.b64decode(created["secret"][6:])) == 24

    second = register(client, "http://hooks.example.org:8080/cb", events=["fine_tuning.job.succeeded"],
                       description="only successes")
    assert second["events"] == ["fine_tuning.job.succeeded"] and second["description"] == "only successes"
    assert second["secret"] != created["secret"]

    assert client.get(f"{HOOKS}/{created['id']}").json() == created  # retrieving by id shows the secret

    listed = client.get(HOOKS).json()
    assert listed["object"] == "list" and listed["has_more"] is False
    assert [e["id"] for e in listed["data"]] == [second["id"], created["id"]]  # newest first
    assert all("secret" not in e for e in listed["data"])
    page = client.get(HOOKS, params={"limit": 1}).json()
    assert [e["id"] for e in page["data"]] == [second["id"]] and page["has_more"] is True
    rest = client.get(HOOKS, params={"limit": 1, "after": page["last_id"]}).json()
    assert [e["id"] for e in rest["data"]] == [created["id"]] and rest["has_more"] is False

    deleted = client.delete(f"{HOOKS}/{created['id']}")
    assert deleted.status_code == 200 and deleted.json() == {"id": created["id"], "object": "webhook_endpoint",
                                                            "deleted": True}
    gone = client.get(f"{HOOKS}/{created['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "not_found_error"
    assert client.delete(f"{HOOKS}/{created['id']}").status_code == 404
    assert [e["id"] for e in client.get(HOOKS).json()["data"]] == [second["id"]]


@pytest.mark.parametrize("url", ["ftp://example.com/x", "example.com/hook", "http://", "https:///path", "",
                                 "http://host:port/x", "javascript:alert(1)"])
def test_bad_url_is_refused(client, url):
    response = client.post(HOOKS, json={"url": url})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "url" and response.json()["error"]["type"] == "invalid_request_error"
    assert client.get(HOOKS).json()["data"] == []


@pytest.mark.parametrize("body, needle", [
    ({"events": ["fine_tuning.job.succeeded", "fine_tuning.job.exploded"]}, "fine_tuning.job.exploded"),
    ({"events": []}, "at least one"),
    ({"events": "fine_tuning.job.failed"}, ""),
])
def test_bad_events_are_refused(client, body, needle):
    response = client.post(HOOKS, json={"url": "https://example.com/h", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "events" and needle in error["message"]
    assert client.get(HOOKS).json()["data"] == []


def test_unknown_field_and_long_description(client):
    response = client.post(HOOKS, json={"url": "https://example.com/h", "secret": "mine"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "secret"
    response = client.post(HOOKS, json={"url": "https://example.com/h", "description": "x" * 501})
    assert response.status_code == 400 and response.json()["error"]["param"] == "description"


def test_another_projects_endpoint_is_not_found(client, other_client):
    mine = register(client, "https://example.com/mine")
    for response in (other_client.get(f"{HOOKS}/{mine['id']}"), other_client.delete(f"{HOOKS}/{mine['id']}")):
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["type"] == "not_found_error" and mine["id"] in error["message"]
    assert other_client.get(HOOKS).json()["data"] == []
    assert other_client.get(HOOKS, params={"after": mine["id"]}).status_code == 404
    assert client.get(f"{HOOKS}/{mine['id']}").status_code == 200  # still there


def test_requires_an_api_key(app):
    with TestClient(app) as anonymous:
        assert anonymous.get(HOOKS).status_code == 401
        assert anonymous.post(HOOKS, json={"url": "https://example.com/h"}).status_code == 401


# --- the outbox and delivery -------------------------------------------------------------------------

def test_signed_delivery_is_retried_after_500(client, hook_server):
    server, quiet = hook_server([500, 200]), hook_server([200])
    endpoint = register(client, server.url)
    register(client, quiet.url, events=["fine_tuning.job.succeeded"])  # not subscribed to cancellations
    job_id = cancelled_job(client)

    (delivery,) = deliveries(job_id)  # one message: the succeeded-only endpoint got nothing queued
    assert delivery.id.startswith("msg_") and delivery.endpoint_id == endpoint["id"]
    assert delivery.event_type == "fine_tuning.job.cancelled" and delivery.status == "pending"

    t0 = time.time()
    assert webhook_delivery.deliver_due(now=t0) == 1
    (row,) = deliveries(job_id)
    assert len(server.requests) == 1
    assert row.status == "pending" and row.attempts == 1 and row.last_error.startswith("HTTP 500")
    assert row.next_attempt_at == pytest.approx(t0 + 5.0)  # FT_WEBHOOK_BACKOFF_S after the first failure

    assert webhook_delivery.deliver_due(now=t0 + 4.0) == 0  # not due yet: the backoff is honoured
    assert len(server.requests) == 1

    assert webhook_delivery.deliver_due(now=t0 + 5.5) == 1
    (row,) = deliveries(job_id)
    assert row.status == "delivered" and row.attempts == 2 and row.delivered_at is not None and row.last_error is None
    assert len(server.requests) == 2

    assert webhook_delivery.deliver_due(now=t0 + 10_000) == 0  # delivered means done
    assert len(server.requests) == 2 and quiet.requests == []

    for request in server.requests:
        assert request["path"] == "/hook" and request["headers"]["webhook-id"] == delivery.id
        event = verify_signed(request, endpoint["secret"])
        assert event == {"id": delivery.id, "object": "event", "type": "fine_tuning.job.cancelled",
                         "created_at": event["created_at"],
                         "data": {"id": job_id, "status": "cancelled", "fine_tuned_model": None, "error": None}}
        assert isinstance(event["created_at"], int) and abs(event["created_at"] - t0) < 60
    # A retry is the same message (same id and body), signed afresh.
    assert server.requests[0]["body"] == server.requests[1]["body"]


def test_an_idle_dispatcher_builds_no_http_client(client, monkeypatch):
    """The dispatcher looks once a second in every API replica; an HTTP client costs ~30 ms of CPU to
    build (its TLS context), so with nothing due neither a pass nor the running dispatcher builds one."""
    built = []

    def no_client(*args, **kwargs):
        built.append(1)
        raise AssertionError("an HTTP client was built with nothing to deliver")

    monkeypatch.setattr(httpx, "AsyncClient", no_client)
    assert webhook_delivery.deliver_due() == 0
    dispatcher = webhook_delivery.WebhookDispatcher(poll_s=0.05)
    dispatcher.start()
    time.sleep(0.5)
    dispatcher.stop()
    assert built == [] and not dispatcher.alive


def test_a_tampered_body_does_not_verify(client, hook_server):
    server = hook_server([200])
    endpoint = register(client, server.url)
    cancelled_job(client)
    assert webhook_delivery.deliver_due() == 1
    request = dict(server.requests[0], body=server.requests[0]["body"].replace(b"cancelled", b"succeeded"))
    with pytest.raises(AssertionError):
        verify_signed(request, endpoint["secret"])
    verify_signed(server.requests[0], endpoint["secret"])


def test_exhausted_retries_end_failed(client, hook_server, settings, monkeypatch):
    monkeypatch.setattr(settings, "webhook_max_attempts", 3)
    server = hook_server([503])
    register(client, server.url)
    job_id = cancelled_job(client)

    t, waits = time.time(), []
    for _ in range(3):
        assert webhook_delivery.deliver_due(now=t) == 1
        (row,) = deliveries(job_id)
        waits.append(row.next_attempt_at - t)
        t = row.next_attempt_at
    assert waits[:2] == [pytest.approx(5.0), pytest.approx(10.0)]  # doubling
    assert row.status == "failed" and row.attempts == 3 and row.last_error.startswith("HTTP 503")
    assert webhook_delivery.deliver_due(now=t + 10_000) == 0
    assert len(server.requests) == 3


def test_unreachable_endpoint_is_retried_later(client, hook_server):
    server = hook_server([200])
    url = server.url
    server.close()  # nothing listens on that port any more
    register(client, url)
    job_id = cancelled_job(client)
    assert webhook_delivery.deliver_due() == 1
    (row,) = deliveries(job_id)
    assert row.status == "pending" and row.attempts == 1 and "Connect" in row.last_error


def test_two_dispatchers_never_send_one_message_twice(client, hook_server):
    server = hook_server([200], delay_s=0.3)
    register(client, server.url)
    job_id = cancelled_job(client)
    now, barrier, results = time.time(), threading.Barrier(3), []

    def replica():
        barrier.wait()
        results.append(webhook_delivery.deliver_due(now=now))

    threads = [threading.Thread(target=replica) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [0, 0, 1] and len(server.requests) == 1
    assert deliveries(job_id)[0].status == "delivered"


def test_deleting_an_endpoint_drops_its_pending_deliveries(client, hook_server):
    server = hook_server([200])
    endpoint = register(client, server.url)
    job_id = cancelled_job(client)
    assert len(deliveries(job_id)) == 1
    assert client.delete(f"{HOOKS}/{endpoint['id']}").status_code == 200
    assert deliveries(job_id) == [] and webhook_delivery.deliver_due() == 0 and server.requests == []


def test_record_job_event_ignores_unfinished_jobs(client, hook_server):
    register(client, hook_server([200]).url)
    file_id = upload(client, EXAMPLES / "sentiment.csv").json()["id"]
    job_id = client.post(JOBS, json={"model": "tiny/bert", "training_file": file_id}).json()["id"]
    with session_scope() as session:
        record_job_event(session, session.get(Job, job_id))
    assert deliveries(job_id) == []


def test_dispatcher_thread_delivers_and_survives_errors(client, hook_server, monkeypatch):
    server = hook_server([200])
    register(client, server.url)
    cancelled_job(client)
    real, calls = webhook_delivery.due_deliveries, []

    def flaky(*args, **kwargs):  # the database is unreachable for the first look at the outbox
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(webhook_delivery, "due_deliveries", flaky)
    dispatcher = webhook_delivery.WebhookDispatcher(poll_s=0.05)
    dispatcher.start()
    try:
        deadline = time.time() + 5
        while not server.requests and time.time() < deadline:
            time.sleep(0.02)
        assert len(server.requests) == 1 and len(calls) >= 2 and dispatcher.alive
    finally:
        dispatcher.stop()
    assert not dispatcher.alive


def test_lifespan_runs_the_dispatcher_when_enabled(app, settings, monkeypatch):
    monkeypatch.setattr(settings, "webhooks_dispatch", True)
    with TestClient(app):
        dispatcher = app.state.webhook_dispatcher
        assert dispatcher is not None and dispatcher.alive
    assert not dispatcher.alive
    monkeypatch.setattr(settings, "webhooks_dispatch", False)
    with TestClient(app):
        assert app.state.webhook_dispatcher is None


def test_signature_matches_the_standard_webhooks_example():
    # The example from the Standard Webhooks specification.
    assert signing.sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                         b'{"test": 2432232314}') == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_backoff_doubles_and_is_capped_at_an_hour():
    assert [signing.backoff_s(n, 5.0) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert signing.backoff_s(30, 5.0) == 3600.0
