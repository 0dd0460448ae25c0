"""Findings 4, 5 and 6 over real HTTP: stop strings, prompts, messages and parameters bounded before the
model runs (400 naming the field, never a 500), and two tenants whose LoRA adapters share one base model
(and its lock): one tenant's long stream, even one its client stopped reading, delays the other's short
request by a decoding step, not by its length. The API is served by uvicorn in a thread of this process,
its models registered as fine-tuned models of two projects."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.live import free_port


@pytest.fixture(scope="module")
def server(app):
    """The API served by uvicorn in this process (the `app` fixture migrated its SQLite database)."""
    import uvicorn

    from app.config import get_settings
    from app.main import create_app

    settings = get_settings().model_copy(update={"housekeeping": False, "webhooks_dispatch": False})
    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    while not instance.started:
        time.sleep(0.02)
    yield port
    instance.should_exit = True
    thread.join(10)


def _register(key: str, task: str, folder: Path) -> str:
    """A fine-tuned model of the key's project, as a finished job registers it."""
    from app.db.engine import session_scope
    from app.db.models import FineTunedModel, Job
    from app.services.keys import authenticate
    from app.storage import get_storage

    project, job = authenticate(key).project.id, f"ftjob-{uuid.uuid4().hex[:12]}"
    model, storage_key = f"ft:{task}:{job}", f"models/{project}/{job}"
    size = get_storage().import_dir(storage_key, folder)
    with session_scope() as session:
        session.add(Job(id=job, project_id=project, model="tiny/unlisted", task=task, training_file="file-none",
                        seed=0, status="succeeded", fine_tuned_model=model))
        session.flush()
        session.add(FineTunedModel(id=model, project_id=project, job_id=job, base_model="tiny/unlisted", task=task,
                                   storage_key=storage_key, bytes=size))
    return model


def _http(port: int, client) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                        headers={"Authorization": client.headers["Authorization"]})


def _refused(response, param: str) -> str:
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text
    return response.json()["error"]["message"]


def test_requests_are_bounded_before_the_model_runs(server, client, adapters, encoders):
    model = _register(client.headers["Authorization"][7:], "text-generation", adapters["a"])
    with _http(server, client) as c:
        def complete(**body):
            return c.post("/v1/completions", json={"model": model, **body})

        assert "at most 4 strings" in _refused(complete(prompt="hi", stop=list("abcde")), "stop")
        assert "64 characters" in _refused(complete(prompt="hi", stop="x" * 65, stream=True), "stop")
        long_prompt = "the movie was great " * 500  # 2,001 tokens of a 2,048-token context
        message = _refused(complete(prompt=long_prompt, max_tokens=100), "prompt")
        assert "2001 tokens" in message and "context of 2048 tokens" in message, message
        _refused(complete(prompt=long_prompt, max_tokens=100, stream=True), "prompt")
        kept = complete(prompt=long_prompt, max_tokens=5, truncate_prompt_tokens=50)
        assert kept.status_code == 200 and kept.json()["usage"]["prompt_tokens"] == 50, kept.text
        clamped = complete(prompt="the movie was great " * 510)  # 2,041 tokens, and no max_tokens: as many as fit
        assert clamped.status_code == 200 and clamped.json()["usage"]["completion_tokens"] == 7, clamped.text
        assert "1 to 32 strings (got 33)" in _refused(complete(prompt=["hi"] * 33), "prompt")
        _refused(complete(prompt=[]), "prompt")
        messages = [{"role": "user", "content": "hi"}] * 257
        _refused(c.post("/v1/chat/completions", json={"model": model, "messages": messages}), "messages")

        def predict(target, inputs, **parameters):
            return c.post(f"/v1/models/{target}/predict", json={"inputs": inputs, "parameters": parameters})

        _refused(predict(model, long_prompt, max_new_tokens=100), "inputs")
        truncated = predict(model, long_prompt, max_new_tokens=3, truncate=20)
        assert truncated.status_code == 200 and isinstance(truncated.json()[0]["generated_text"], str)
        _refused(predict(model, "hi", top_k="x", do_sample=True), "parameters.top_k")
        _refused(predict(model, "hi", stop=["a"] * 5), "parameters.stop")
        _refused(predict(model, "hi", return_full_text="yes"), "parameters.return_full_text")

        classifier = _register(client.headers["Authorization"][7:], "text-classification",
                               encoders["text-classification"])
        _refused(predict(classifier, "the movie", top_k="x"), "parameters.top_k")
        mixed = [{"text": "the movie", "text_pair": "was great"}, "a boring film", {"text": "bad"}]
        together = predict(classifier, mixed)
        assert together.status_code == 200, together.text
        alone = [predict(classifier, [item]).json()[0] for item in mixed]
        assert [[x["label"] for x in row] for row in together.json()] == [[x["label"] for x in row] for row in alone]
        assert all(abs(x["score"] - y["score"]) < 1e-4 for r, s in zip(together.json(), alone) for x, y in zip(r, s))

        reader = _register(client.headers["Authorization"][7:], "question-answering", encoders["question-answering"])
        qa = {"question": "what was great?", "context": "the movie was great"}
        for bad in ({"top_k": "x"}, {"top_k": 0}, {"max_answer_len": 10**6}, {"handle_impossible_answer": "no"}):
            _refused(predict(reader, qa, **bad), f"parameters.{next(iter(bad))}")
        assert predict(reader, qa, top_k=2).status_code == 200


def _open_stream(port: int, key: str, body: dict) -> tuple[socket.socket, bytes]:
    """A streamed completion read by a client that takes the first chunk and then stops reading (a
    small receive buffer, so the server soon cannot send more)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    payload = json.dumps(body).encode()
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: test\r\nAuthorization: {key}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    received = b""
    while b"data:" not in received:
        received += sock.recv(1024)
    return sock, received


def test_a_stalled_stream_of_one_tenant_does_not_hold_up_another(server, client, other_client, adapters):
    """Project A streams 1,500 tokens and stops reading after the first chunk; project B's short
    request on an adapter of the same base answers at once. Then A's client leaves mid-stream, and
    its generation stops."""
    key_a, key_b = client.headers["Authorization"], other_client.headers["Authorization"]
    model_a = _register(key_a[7:], "text-generation", adapters["a"])
    model_b = _register(key_b[7:], "text-generation", adapters["b"])
    body_b = {"model": model_b, "prompt": "markets fell", "max_tokens": 4}
    with _http(server, client) as a, _http(server, other_client) as b:
        assert a.post("/v1/completions", json={"model": model_a, "prompt": "hi", "max_tokens": 1}).status_code == 200
        assert b.post("/v1/completions", json=body_b).status_code == 200  # both adapters loaded, on one base
        started = time.perf_counter()
        sock, received = _open_stream(server, key_a, {"model": model_a, "prompt": "the movie", "max_tokens": 1500,
                                                      "stream": True})
        time.sleep(0.3)
        asked = time.perf_counter()
        answer = b.post("/v1/completions", json=body_b)
        waited = time.perf_counter() - asked
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 4
        with sock:
            while b"[DONE]" not in received:
                received += sock.recv(65536)
        streamed = time.perf_counter() - started
        assert b'"finish_reason": "length"' in received
        print(f"B answered in {waited:.3f} s while A's 1,500-token stream took {streamed:.2f} s")
        assert waited < 1.0 and waited < streamed / 4, (waited, streamed)

        sock, _ = _open_stream(server, key_a, {"model": model_a, "prompt": "the movie", "max_tokens": 1500,
                                               "stream": True})
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # reset: the client is gone
        left = time.perf_counter()
        while any(t.name == "generate-stream" for t in threading.enumerate()):
            assert time.perf_counter() - left < streamed / 2, "the generation ran on for a client that left"
            time.sleep(0.01)
