"""Real receivers for webhook tests — a well-behaved HTTP server, a tarpit that drips its answer, a TLS
server with a test CA — and a Standard Webhooks signature check."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import socket
import socketserver
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0

    def verify_request(self, request, client_address) -> bool:
        self.connections += 1  # every accepted TCP connection, whether or not a request follows
        return True


class HookServer:
    """A real HTTP receiver: answers the given statuses in turn (the last one repeats), with ``body`` for
    answers that are not 2xx and ``headers`` on every answer."""

    def __init__(self, statuses=(200,), delay_s: float = 0.0, body: bytes = b"nope",
                 headers: dict[str, str] | None = None, tls: ssl.SSLContext | None = None):
        self.statuses, self.delay_s, self.requests = list(statuses), delay_s, []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                payload = self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer._lock:
                    received = {k.lower(): v for k, v in self.headers.items()}
                    outer.requests.append({"path": self.path, "headers": received, "body": payload,
                                           "at": time.monotonic()})
                    status = outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0]
                time.sleep(outer.delay_s)
                answer = b"ok!!" if status < 300 else body
                self.send_response(status)
                self.send_header("content-length", str(len(answer)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = _CountingServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def connections(self) -> int:
        return self.server.connections

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Tarpit:
    """A receiver that reads the request, then sends its answer one byte every ``drip_s`` seconds, forever:
    the client sees progress, so only a total deadline ends the exchange."""

    ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n" + b"x-padding: " + b"." * 10_000

    def __init__(self, drip_s: float = 0.2):
        self.open_connections = 0
        self.connections = 0
        self._closing, self._lock = threading.Event(), threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                with outer._lock:
                    outer.connections += 1
                    outer.open_connections += 1
                try:
                    self.request.settimeout(5)
                    received = b""
                    while b"\r\n\r\n" not in received:
                        chunk = self.request.recv(65536)
                        if not chunk:
                            return
                        received += chunk
                    for byte in Tarpit.ANSWER:
                        if outer._closing.wait(drip_s):
                            return
                        self.request.sendall(bytes([byte]))
                except OSError:
                    pass  # the client gave up: that is the point
                finally:
                    with outer._lock:
                        outer.open_connections -= 1

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()


def tls_pair(hostname: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``hostname`` issued by a fresh test CA, and a client
    context that trusts only that CA (and checks host names, as every default context does)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as chain:
        chain.write(cert.public_bytes(pem) + key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        chain.flush()
        server.load_cert_chain(chain.name)
    client = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server, client


def fake_resolver(real_getaddrinfo, answers: dict[str, list[str]]):
    """A stand-in for socket.getaddrinfo answering the names in ``answers`` (mutable: change it to change
    the answer, as a DNS server would) and passing every other name to the real resolver."""
    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return real_getaddrinfo(host, port, family, type, proto, flags)
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (ip, int(port or 0), 0, 0) if ":" in ip else (ip, int(port or 0))) for ip in answers[name]]
    return getaddrinfo


def verify_signed(request: dict, secret: str) -> dict:
    """Check one received request as a Standard Webhooks receiver would; return its JSON body."""
    headers, body = request["headers"], request["body"]
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert headers["content-type"] == "application/json"
    assert abs(int(timestamp) - time.time()) < 60
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_"):])
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest())
    signatures = [s.split(",", 1) for s in headers["webhook-signature"].split()]
    assert ["v1", expected.decode()] in signatures, (headers["webhook-signature"], expected)
    return json.loads(body)
