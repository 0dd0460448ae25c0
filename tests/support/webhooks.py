"""A real HTTP receiver for webhook tests, and a Standard Webhooks signature check."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HookServer:
    """A real HTTP receiver: answers the given statuses in turn (the last one repeats)."""

    def __init__(self, statuses=(200,), delay_s: float = 0.0):
        self.statuses, self.delay_s, self.requests = list(statuses), delay_s, []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    outer.requests.append({"path": self.path, "headers": headers, "body": body})
                    status = outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0]
                time.sleep(outer.delay_s)
                self.send_response(status)
                self.send_header("content-length", "4")
                self.end_headers()
                self.wfile.write(b"ok!!" if status < 300 else b"nope")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


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


