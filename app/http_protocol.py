"""uvicorn's fast HTTP/1.1 protocol (httptools), with a bound on a request's head.

llhttp, the parser under httptools, sets no limit on the request line and headers, and httptools
gathers a header value until it ends: a client that never ends one (no key needed — headers come
before any of our code runs) grew the API by as many bytes as it sent. So while a request's head is
read, the bytes are fed to the parser in small slices and counted, and a head larger than
``MAX_HEAD_BYTES`` is answered 431 and the connection closed. What follows the head (the body) is fed
as before, whole, at full speed; bodies are bounded by the gate (app/api/gate.py)."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# The request line and all headers together. Real clients send a few KB; 64 KiB leaves room for large
# cookies or tokens a proxy adds.
MAX_HEAD_BYTES = 64 * 1024
# Bytes fed to the parser at a time while reading a head: the most a head can pass its bound before
# the bound is seen.
SLICE_BYTES = 4096

_TOO_LARGE_BODY = (b'{"error":{"message":"The request line and headers are larger than %d bytes.",'
                   b'"type":"invalid_request_error","param":null,"code":"headers_too_large"}}' % MAX_HEAD_BYTES)
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
              b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(_TOO_LARGE_BODY) + _TOO_LARGE_BODY)


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reading_head = True  # a connection starts with a request's head
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True

    def on_headers_complete(self) -> None:
        self._reading_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The next bytes on a kept-alive connection are the next request's head.
        self._reading_head, self._head_bytes = True, 0

    def data_received(self, data: bytes) -> None:
        while data and self._reading_head:
            piece, data = data[:SLICE_BYTES], data[SLICE_BYTES:]
            self._head_bytes += len(piece)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.transport.write(_TOO_LARGE)
                self.transport.close()
                return
            super().data_received(piece)
            if self.transport.is_closing():
                return
        if data:
            super().data_received(data)
