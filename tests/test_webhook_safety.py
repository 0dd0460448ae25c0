"""Webhook safety. Receivers on the operator's own network are refused, when registered and again when a
delivery connects (a DNS answer that changes meanwhile gains nothing); TLS still checks the certificate
against the URL's host; a delivery has one total deadline; one project's slow receivers do not delay
another project's deliveries; a project's endpoints are bounded; what receivers answer is made printable
before it is logged or stored. Every receiver is a real server on 127.0.0.1; the only stand-in is the
system resolver (socket.getaddrinfo), to play a DNS server that changes its answer."""

from __future__ import annotations

import logging
import socket
import time
import unicodedata

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.webhooks import delivery as webhook_delivery
from app.webhooks import outbound
from tests.support.webhook_flow import HOOKS, cancelled_job, deliveries, register
from tests.support.webhook_flow import hook_server, settings, tarpit  # noqa: F401 - fixtures
from tests.support.webhooks import fake_resolver, tls_pair

# Addresses on the operator's network, in the spellings a resolver accepts, and the word saying why.
REFUSED = [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::1]:6379/", "loopback"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://localhost:5432/", "loopback"),
    ("http://LOCALHOST./", "loopback"),
    ("http://db.localhost/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://0/", "unspecified"),
    ("http://0.0.0.0:8000/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped
    ("http://[::ffff:a9fe:a9fe]/", "link-local"),  # 169.254.169.254, mapped
    ("http://[64:ff9b::a00:1]/", "private"),  # NAT64 of 10.0.0.1
    ("http://[2002:7f00:1::1]/", "loopback"),  # 6to4 of 127.0.0.1
    ("http://100.64.0.1/", "shared"),
    ("https://224.0.0.251/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fd00::1]/", "private"),
    ("http://240.0.0.1/", "reserved"),
]


@pytest.fixture()
def nothing_allowed(settings, monkeypatch):
    monkeypatch.setattr(settings, "webhook_allowed_networks", [])  # the default
    return settings


@pytest.fixture()
def resolver(monkeypatch):
    """Names → addresses, as a DNS server would answer them now; change the dict to change the answer."""
    answers: dict[str, list[str]] = {}
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver(socket.getaddrinfo, answers))
    return answers


# --- registration ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, why", REFUSED)
def test_addresses_on_the_operators_network_are_refused(client, nothing_allowed, url, why):
    response = client.post(HOOKS, json={"url": url})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "url" and error["type"] == "invalid_request_error"
    assert why in error["message"] and "FT_WEBHOOK_ALLOWED_NETWORKS" in error["message"], error["message"]
    assert client.get(HOOKS).json()["data"] == []


@pytest.mark.parametrize("url, problem", [("http://0177.0.0.1/", "Invalid IPv4 address"),
                                          ("http://[fe80::1%25eth0]/", "zone id"),
                                          ("http://[fe80::1::2]/", "Invalid IPv6 address"),
                                          ("http://example.com:99999/", "port 99999")])
def test_hosts_delivery_could_not_use_are_refused(client, nothing_allowed, url, problem):
    response = client.post(HOOKS, json={"url": url})
    assert response.status_code == 400 and response.json()["error"]["param"] == "url"
    assert problem in response.json()["error"]["message"]


def test_an_operator_can_allow_a_private_network(client, settings, monkeypatch):
    monkeypatch.setattr(settings, "webhook_allowed_networks", ["10.0.0.0/8"])
    assert register(client, "http://10.0.0.7:8080/cb")["url"] == "http://10.0.0.7:8080/cb"
    register(client, "http://[::ffff:10.1.2.3]/cb")  # the same address, IPv4-mapped
    refused = client.post(HOOKS, json={"url": "http://127.0.0.1/cb"})
    assert refused.status_code == 400 and "loopback" in refused.json()["error"]["message"]


def test_a_mistyped_allowed_network_stops_start_up():
    for bad in ("10.1.2.3/8", "banana", "10.0.0.0/33"):
        with pytest.raises(ValidationError) as caught:
            Settings(webhook_allowed_networks=[bad])
        assert "FT_WEBHOOK_ALLOWED_NETWORKS" in str(caught.value) and bad in str(caught.value)
    assert Settings(webhook_allowed_networks=["10.0.0.0/8", "fd00::/8"]).webhook_allowed_networks == \
        ["10.0.0.0/8", "fd00::/8"]


# --- delivery --------------------------------------------------------------------------------------------

def test_a_name_rebound_to_loopback_is_refused_when_delivering(client, hook_server, nothing_allowed, resolver,
                                                               monkeypatch):
    receiver = hook_server([200])
    resolver["hooks.rebind.test"] = ["93.184.215.14"]  # public when the endpoint is registered
    register(client, f"http://hooks.rebind.test:{receiver.port}/hook")
    resolver["hooks.rebind.test"] = ["127.0.0.1"]  # ... and loopback when the job ends
    job_id = cancelled_job(client)

    assert webhook_delivery.deliver_due() == 1
    (row,) = deliveries(job_id)
    assert row.status == "pending" and row.attempts == 1
    assert "refused to connect" in row.last_error and "127.0.0.1, a loopback address" in row.last_error
    assert "FT_WEBHOOK_ALLOWED_NETWORKS" in row.last_error
    assert receiver.connections == 0 and receiver.requests == []

    # Once loopback is allowed, the very address the name resolves to is the one connected to.
    monkeypatch.setattr(nothing_allowed, "webhook_allowed_networks", ["127.0.0.0/8"])
    assert webhook_delivery.deliver_due(now=row.next_attempt_at) == 1
    assert deliveries(job_id)[0].status == "delivered"
    (request,) = receiver.requests
    assert request["headers"]["host"] == f"hooks.rebind.test:{receiver.port}"


def test_tls_checks_the_certificate_against_the_url_host(client, hook_server, resolver, monkeypatch):
    server_tls, client_tls = tls_pair("hooks.right.test")
    monkeypatch.setattr(outbound, "tls_context", lambda: client_tls)  # trust the test CA instead of certifi's
    receiver = hook_server([200], tls=server_tls)
    resolver.update({"hooks.right.test": ["127.0.0.1"], "hooks.wrong.test": ["127.0.0.1"]})
    right = register(client, f"https://hooks.right.test:{receiver.port}/hook")
    register(client, f"https://hooks.wrong.test:{receiver.port}/hook")  # same server, another name
    job_id = cancelled_job(client)

    assert webhook_delivery.deliver_due() == 2
    rows = {row.endpoint_id == right["id"]: row for row in deliveries(job_id)}
    assert rows[True].status == "delivered" and len(receiver.requests) == 1
    assert rows[False].status == "pending" and "certificate verify failed" in rows[False].last_error


def test_a_delivery_has_one_total_deadline(client, tarpit, settings, monkeypatch):
    monkeypatch.setattr(settings, "webhook_timeout_s", 1.5)
    pit = tarpit(drip_s=0.2)  # a byte every 0.2 s: no single read ever waits long
    register(client, pit.url)
    job_id = cancelled_job(client)

    started = time.monotonic()
    assert webhook_delivery.deliver_due() == 1
    elapsed = time.monotonic() - started
    (row,) = deliveries(job_id)
    assert 1.4 < elapsed < 2.5, elapsed
    assert row.status == "pending" and row.last_error.startswith("timed out") and "1.5 s" in row.last_error
    assert pit.connections == 1


def test_slow_receivers_of_one_project_do_not_delay_another(client, other_client, tarpit, hook_server, settings,
                                                            monkeypatch):
    monkeypatch.setattr(settings, "webhook_timeout_s", 4.0)
    monkeypatch.setattr(settings, "webhook_project_concurrency", 2)
    pits = [tarpit() for _ in range(3)]
    for pit in pits:
        register(client, pit.url)
    fast = hook_server([200])
    register(other_client, fast.url)

    dispatcher = webhook_delivery.WebhookDispatcher(poll_s=0.2)  # as the API process runs it
    dispatcher.start()
    try:
        cancelled_job(client)  # three deliveries to tarpits
        deadline = time.monotonic() + 5
        while sum(p.open_connections for p in pits) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        cancelled_job(other_client)
        queued = time.monotonic()
        while not fast.requests and time.monotonic() < queued + 3:
            time.sleep(0.02)
        assert fast.requests, "the other project's delivery waited for the tarpits"
        assert fast.requests[0]["at"] - queued < 1.5
        # Meanwhile the tarpits hang, at most FT_WEBHOOK_PROJECT_CONCURRENCY of them at a time.
        assert sum(p.open_connections for p in pits) == 2 and sum(p.connections for p in pits) == 2
    finally:
        dispatcher.stop()
    assert not dispatcher.alive


def test_a_projects_endpoints_are_capped(client, other_client, settings, monkeypatch):
    monkeypatch.setattr(settings, "quota_webhook_endpoints", 2)
    first = register(client, "https://example.com/one")
    register(client, "https://example.com/two")
    response = client.post(HOOKS, json={"url": "https://example.com/three"})
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["param"] == "url"
    assert "2 webhook endpoints" in error["message"] and "DELETE /v1/webhooks/{id}" in error["message"]
    assert int(response.headers["retry-after"]) >= 1
    assert len(client.get(HOOKS).json()["data"]) == 2
    register(other_client, "https://example.com/theirs")  # the cap is per project
    assert client.delete(f"{HOOKS}/{first['id']}").status_code == 200
    register(client, "https://example.com/three")


def test_receiver_answers_are_made_printable_before_logging_and_storing(client, hook_server, caplog):
    forged = "line one\r\n2026-01-01 INFO admin logged in\n\x1b[31mred\x1b[0m \u202egnp.exe\u2028"
    server = hook_server([500], body=(forged * 300).encode())
    register(client, server.url)
    job_id = cancelled_job(client)
    with caplog.at_level(logging.WARNING, logger="app.webhooks.delivery"):
        assert webhook_delivery.deliver_due() == 1

    (row,) = deliveries(job_id)
    error = row.last_error
    assert error.startswith("HTTP 500: line one\\r\\n2026-01-01 INFO admin logged in\\n\\x1b[31mred"), error
    assert not any(unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" for c in error)
    assert len(error) <= 250
    (logged,) = [r.getMessage() for r in caplog.records if "attempt 1 failed" in r.getMessage()]
    assert "\n" not in logged and "\x1b" not in logged and "\u202e" not in logged


def test_redirects_are_not_followed(client, hook_server):
    target = hook_server([200])
    redirector = hook_server([307], headers={"location": target.url})
    register(client, redirector.url)
    job_id = cancelled_job(client)
    assert webhook_delivery.deliver_due() == 1
    (row,) = deliveries(job_id)
    assert row.last_error.startswith("HTTP 307") and target.requests == []
