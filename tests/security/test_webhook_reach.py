"""Finding 7: webhooks were a blind SSRF — the URLs below were all accepted, and the server POSTed to a
loopback path of the attacker's choice when a job ended. The live API refuses each at registration
(delivery-time checks, DNS rebinding, total timeouts and fairness are proven in tests/test_webhook_safety.py
against real receivers)."""

from __future__ import annotations

import pytest

URLS = ["http://127.0.0.1:8000/v1/files", "http://169.254.169.254/latest/meta-data/", "http://[::1]:6379/",
        "http://10.0.0.1/hook", "http://localhost:5432/", "http://0x7f000001/hook", "http://2130706433/hook",
        "http://127.1/hook", "http://[::ffff:127.0.0.1]/hook", "http://192.168.1.1/", "http://100.64.0.1/",
        "http://0.0.0.0:8000/", "http://224.0.0.1/"]


@pytest.mark.parametrize("url", URLS)
def test_a_webhook_to_the_operators_network_is_refused(pg_stack, tenants, url):
    with pg_stack.client(tenants.a) as c:
        response = c.post("/v1/webhooks", json={"url": url})
    assert response.status_code == 400, (url, response.text)
    assert response.json()["error"]["param"] == "url"
