"""Finding 2: bodies were read before the key was checked, and only uploads were capped. 400 MB of zeros
posted to /v1/chat/completions with no key grew the API by 800 MB before its 401; JSON bodies were
parsed before auth (a bad body without a key got 400, not 401); multipart uploads were spooled to disk
before auth. Now the key is checked from the headers alone, before any body is read, and every body
is capped while it streams."""

from __future__ import annotations

import httpx

from tests.security.conftest import MB, keep_sending, raw_connection, read_status

HUGE = 400 * MB


def _headers(path: str, length: int | None, key: str | None = None,
             content_type: str = "application/json") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_400_mb_body_without_a_key_is_answered_401_before_it_is_read(pg_stack):
    before = pg_stack.api_rss()
    with raw_connection(pg_stack) as sock:
        sock.sendall(_headers("/v1/chat/completions", HUGE))
        status, response = read_status(sock)  # answered from the headers: not a byte of the body was needed
        sent = keep_sending(sock, HUGE, b"\0" * MB)
    assert status == 401 and b"missing_api_key" in response
    assert b"connection: close" in response.lower()
    assert sent < HUGE, "the server kept reading a body it had refused"
    assert pg_stack.api_rss() - before < 20 * MB


def test_a_chunked_body_without_a_key_is_answered_401_too(pg_stack):
    with raw_connection(pg_stack) as sock:
        sock.sendall(_headers("/v1/completions", None))
        keep_sending(sock, 1, b"100000\r\n" + b"\0" * 0x100000 + b"\r\n")
        status, _ = read_status(sock)
    assert status == 401


def test_an_upload_without_a_key_is_refused_before_it_is_spooled(pg_stack):
    with raw_connection(pg_stack) as sock:
        sock.sendall(_headers("/v1/files", 60 * MB, content_type="multipart/form-data; boundary=xyz"))
        keep_sending(sock, 1, b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n\r\n")
        status, _ = read_status(sock)
        sent = keep_sending(sock, 60 * MB, b"a" * MB)
    assert status == 401 and sent < 60 * MB


def test_a_bad_json_body_without_a_key_gets_401_not_400(pg_stack):
    response = httpx.post(f"{pg_stack.url}/v1/fine_tuning/jobs", content=b"{not json",
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
    wrong = httpx.post(f"{pg_stack.url}/v1/fine_tuning/jobs", content=b"{not json",
                       headers={"Content-Type": "application/json", "Authorization": "Bearer sk-ft-nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"


def test_a_body_past_the_cap_is_refused_with_a_key_as_well(pg_stack, tenants):
    # Declared: answered from the headers; streamed (chunked): cut off where it passes the cap.
    with raw_connection(pg_stack) as sock:
        sock.sendall(_headers("/v1/chat/completions", 64 * MB, key=tenants.a))
        status, response = read_status(sock)
    assert status == 413 and b"request_too_large" in response
    with raw_connection(pg_stack) as sock:
        sock.sendall(_headers("/v1/chat/completions", None, key=tenants.a))
        sent = keep_sending(sock, 64 * MB, b"100000\r\n" + b" " * 0x100000 + b"\r\n")
        status, _ = read_status(sock)
    assert status == 413 and sent < 64 * MB


def test_a_predict_key_may_not_send_an_upload_sized_body(pg_stack, tenants):
    """Uploads may be large, but only for keys allowed to upload: a predict key's body stops at the
    ordinary cap, and a small upload is refused by scope."""
    with raw_connection(pg_stack) as sock:
        sock.sendall(_headers("/v1/files", 30 * MB, key=tenants.a_predict,
                              content_type="multipart/form-data; boundary=xyz"))
        status, _ = read_status(sock)
    assert status == 413
    small = httpx.post(f"{pg_stack.url}/v1/files", files={"file": ("a.csv", b"text,label\nhi,1\n")},
                       headers={"Authorization": f"Bearer {tenants.a_predict}"})
    assert small.status_code == 403 and small.json()["error"]["code"] == "insufficient_scope"


def test_deeply_nested_json_bodies_answer_400(pg_stack, tenants):
    nested = b'{"model": "x", "messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    response = httpx.post(f"{pg_stack.url}/v1/chat/completions", content=nested,
                          headers={"Content-Type": "application/json", "Authorization": f"Bearer {tenants.a}"})
    assert response.status_code == 400, response.text


def test_a_flood_of_headers_without_a_key_is_cut_off(pg_stack):
    """Headers come before any of the service's code: the HTTP parser (httptools) kept every byte of a
    header that never ended. Now a request's head past 64 KiB is answered 431 and the connection closed."""
    before = pg_stack.api_rss()
    with raw_connection(pg_stack) as sock:
        sock.sendall(b"GET /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sent = keep_sending(sock, 200 * MB, b"X-Junk: " + b"a" * MB + b"\r\n")
        status, response = read_status(sock)
    assert status == 431 and b"headers_too_large" in response
    assert sent < 200 * MB
    assert pg_stack.api_rss() - before < 20 * MB
