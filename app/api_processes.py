"""The API's processes, each listening on a socket of its own, so that the kernel spreads connections
evenly across them.

uvicorn's workers share one listening socket, and the process that wakes first accepts every connection
waiting (its event loop accepts until the queue is empty). Sixteen keep-alive connections opened together
landed 16/0, 15/1, 14/2, 10/6 on two processes, one start after another: one process served nearly all
the load while the other idled, and a client pool's connections stay where they landed for as long as
they live. That, not the code, was why the same build served 1,250 job GETs/s on one start and 1,600 on
the next (bench/RESULTS.md, "Control plane"). With SO_REUSEPORT, each process listens on its own socket
bound to the same address, and the kernel hashes every new connection to one of them.

uvicorn's supervisor (restarts of a dead process, SIGHUP, TTIN/TTOU) stays in charge. It hands its
sockets to each new process by pickling them; what it is handed here is a recipe instead, which binds
a fresh socket in the process that unpickles it. The supervisor's own socket is bound and never
listens: it holds the port (start-up fails at once if the port is taken) but is not in the group the
kernel spreads connections over, which only listening sockets join."""

from __future__ import annotations

import logging
import socket
import sys

logger = logging.getLogger("uvicorn.error")


def spreads_connections() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) that other such sockets may bind too."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class OwnListener:
    """Stands for a listening socket in the supervisor; unpickled in an API process, it is a new socket of
    that process's own on the same address."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port

    def __reduce__(self):
        return reuse_port_socket, (self.host, self.port)


def run(config) -> None:
    """Serve ``config`` (a uvicorn.Config of several workers) with one listening socket per process."""
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    try:
        held = reuse_port_socket(config.host, config.port)
    except OSError as exc:
        logger.error("Cannot listen on %s:%s: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILURE)
    port = held.getsockname()[1]  # port 0 asks for a free one: every process then takes that one
    logger.info("Uvicorn running on http://%s:%d with %d processes, each on its own listening socket "
                "(Press CTRL+C to quit)", config.host, port, config.workers)
    try:
        Multiprocess(config, sockets=[OwnListener(config.host, port)]).run()
    finally:
        held.close()
