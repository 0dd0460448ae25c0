"""Refuse oversized uploads before they are read: a declared Content-Length past the cap answers 413
at once, and a body that streams past it (chunked uploads) is cut off and answered 413 too."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file itself


class UploadLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, path: str = "/v1/files"):
        self.app, self.limit, self.path = app, max_bytes + MULTIPART_OVERHEAD, path
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != self.path:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(send)
            return
        seen, exceeded = 0, False

        async def limited_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            # Whatever the app answers after the cut-off (a parse error), the client gets the 413.
            if exceeded:
                return
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if exceeded and not started:
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps(error_body(413, f"The upload is larger than the {self.max_bytes}-byte limit "
                                          "(FT_MAX_UPLOAD_BYTES).", "file", "file_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
