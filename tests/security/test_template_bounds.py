"""Finding 1: chat templates rendered without bounds — `{{ "x"*100000000 }}…` posted to the estimate
route with a messages file OOM-killed the API, and nested range() loops did the same. The same
requests to the live API: refused within a couple of seconds with 400 naming chat_template, the API
process's memory barely moving."""

from __future__ import annotations

import time

import pytest

from tests.security.conftest import MB
from tests.support import task_data as data

BOMBS = {
    "output": '{{ "x"*100000000 }}{% for m in messages %}{{m.content}}{% endfor %}',
    "time": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
            "{% for m in messages %}{{m.content}}{% endfor %}",
    "memory": "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
              "{{ ns.s }}{% for m in messages %}{{m.content}}{% endfor %}",
}


@pytest.fixture(scope="module")
def chats(pg_stack, tenants) -> str:
    with pg_stack.client(tenants.a) as c:
        response = c.post("/v1/files", files={"file": ("chats.jsonl", data.jsonl(data.chat(20)))},
                          data={"purpose": "fine-tune"})
    return response.json()["id"]


@pytest.mark.parametrize("route", ["/v1/fine_tuning/jobs/estimate", "/v1/fine_tuning/jobs"])
@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_a_chat_template_bomb_is_refused_quickly(pg_stack, tenants, chats, route, bomb):
    before = pg_stack.api_rss()
    with pg_stack.client(tenants.a) as c:
        started = time.monotonic()
        response = c.post(route, json={"model": "tiny/gpt2", "training_file": chats, "chat_template": BOMBS[bomb]})
        took = time.monotonic() - started
    assert response.status_code == 400 and response.json()["error"]["param"] == "chat_template", response.text
    assert took < 3.0, took
    assert pg_stack.api_rss() - before < 50 * MB
