"""Several API processes share the load of keep-alive clients (app/api_processes.py): connections opened
together spread over the processes instead of landing on whichever woke first. A real `finetune serve`
with two API processes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import psutil
import pytest

from app.api_processes import spreads_connections
from tests.support.live import REPO, LiveStack, free_port

pytestmark = pytest.mark.skipif(not spreads_connections(), reason="SO_REUSEPORT is Linux/BSD only")

CONNECTIONS = 32


def _api_processes(stack: LiveStack) -> list[psutil.Process]:
    return [p for p in psutil.Process(stack.process.pid).children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())]


def _listening(stack: LiveStack, expected: int, timeout: float = 120) -> list[psutil.Process]:
    """The API processes once ``expected`` of them listen: /readyz answers as soon as the first one
    does, and until the others listen the kernel has only that one's socket to give connections to."""
    deadline = time.monotonic() + timeout
    while True:
        processes = _api_processes(stack)
        listening = [p for p in processes if any(c.status == psutil.CONN_LISTEN and c.laddr.port == stack.port
                                                 for c in p.net_connections("tcp"))]
        if len(listening) >= expected or time.monotonic() > deadline:
            return listening
        time.sleep(0.2)


def test_connections_opened_together_spread_over_the_processes(tmp_path):
    stack = LiveStack(tmp_path, tmp_path / "models", embedded_worker=False, api_workers="2")
    with stack.running():
        processes = _listening(stack, 2)
        assert len(processes) == 2, stack.log()
        clients = [socket.create_connection(("127.0.0.1", stack.port)) for _ in range(CONNECTIONS)]
        try:
            for client in clients:  # one request each, kept alive, as a client pool does
                client.sendall(b"GET /readyz HTTP/1.1\r\nHost: test\r\n\r\n")
                assert client.recv(4096).startswith(b"HTTP/1.1 200"), stack.log()
            held = [sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == stack.port
                        for c in p.net_connections("tcp")) for p in processes]
        finally:
            for client in clients:
                client.close()
    assert sum(held) == CONNECTIONS
    # The kernel hashes each connection to a process: a split worse than 6/26 has odds of about 1e-4.
    # One shared socket gave 16/0, 15/1, 14/2 for 16 connections.
    assert min(held) >= 6, held


def test_a_port_already_taken_stops_start_up_at_once(tmp_path):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        stack = LiveStack(tmp_path, tmp_path / "models", embedded_worker=False, api_workers="2")
        stack.env["FT_API_PORT"] = str(port)
        result = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--no-worker"], cwd=REPO, env=stack.env,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"Cannot listen on 127.0.0.1:{port}" in result.stdout + result.stderr
