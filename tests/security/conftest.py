"""Security tests: each one reproduces a finding of the review against real server processes — the
production shape (PostgreSQL, Redis, a real worker) or the embedded default — sending what a careless
or hostile client holding two projects' keys sent, and asserting the bound that now holds. Where the
finding was memory, the API process's resident memory is measured around the request."""

from __future__ import annotations

import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import EXAMPLES
from tests.support.live import LiveStack

MB = 2**20


@dataclass
class Tenants:
    """Two projects with an admin key each, and a predict-only key of the first."""

    a: str
    b: str
    a_predict: str
    project_a: str
    project_b: str


@pytest.fixture(scope="session")
def tenants(pg_stack) -> Tenants:
    suffix = uuid.uuid4().hex[:6]
    project_a, project_b = f"sec-a-{suffix}", f"sec-b-{suffix}"
    admin_a = pg_stack.cli("keys", "create", "--project", project_a, "--scope", "admin").strip()
    admin_b = pg_stack.cli("keys", "create", "--project", project_b, "--scope", "admin").strip()
    with pg_stack.client(admin_a) as c:
        predict = c.post("/v1/keys", json={"scope": "predict", "name": "serving"}).json()["value"]
    return Tenants(admin_a, admin_b, predict, project_a, project_b)


@pytest.fixture()
def project(pg_stack):
    """A fresh project with an admin key, for tests that change its quotas."""
    name = f"sec-q-{uuid.uuid4().hex[:6]}"
    key = pg_stack.cli("keys", "create", "--project", name, "--scope", "admin").strip()
    return name, key


@pytest.fixture(scope="module")
def quiet_stack(base_models_dir, tmp_path_factory):
    """The embedded default (SQLite, SQLite broker) with no worker: jobs stay queued until a test starts
    one, and the API can be restarted with other settings."""
    stack = LiveStack(tmp_path_factory.mktemp("quiet-stack"), base_models_dir, embedded_worker=False)
    with stack.running():
        yield stack


def upload_example(client: httpx.Client, name: str = "sentiment.csv") -> str:
    response = client.post("/v1/files", files={"file": (name, (EXAMPLES / name).read_bytes())},
                           data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


@contextmanager
def raw_connection(stack: LiveStack, timeout: float = 10):
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()


def read_status(sock: socket.socket) -> tuple[int, bytes]:
    """The status code and the raw bytes (headers and body) of the first response on a raw connection."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def keep_sending(sock: socket.socket, total: int, chunk: bytes) -> int:
    """Sends up to ``total`` bytes until the server stops taking them; returns how many it took."""
    sent = 0
    try:
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # the server closed the connection: it is not reading the rest
        pass
    return sent
