"""The gate every request passes before a route sees it.

1. Under ``/v1`` the API key is checked from the headers alone, before a byte of the body is read or
   spooled: whatever an unauthenticated client sends, it costs the server its headers and gets a 401.
2. The body is capped while it streams: a declared ``Content-Length`` past the cap answers 413 at once,
   a chunked body is cut off where it passes the cap. Uploads (``POST /v1/files`` with a key allowed to
   upload) may reach FT_MAX_UPLOAD_BYTES; every other body FT_MAX_BODY_BYTES.

Early answers carry ``Connection: close``: the server then drops the unread rest of the body instead of
reading it to reuse the connection. Which *scope* a route needs is declared by the route itself
(app.api.deps); the gate only says who is calling."""

from __future__ import annotations

import json

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body, header_value
from app.services import keys

UPLOAD_PATH = "/v1/files"
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the uploaded file itself


class Gate:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int):
        self.app = app
        self.max_body_bytes, self.max_upload_bytes = max_body_bytes, max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        caller = None
        if scope["path"] == "/v1" or scope["path"].startswith("/v1/"):
            caller, problem = await _authenticate(headers.get(b"authorization"))
            if problem is not None:
                await _answer(send, 401, *problem)
                return
            scope.setdefault("state", {})["caller"] = caller
        uploading = scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOAD_PATH and \
            caller is not None and caller.allows("train")
        limit = self.max_upload_bytes + MULTIPART_OVERHEAD if uploading else self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(send, uploading)
            return
        await self._capped(scope, receive, send, limit, uploading)

    async def _capped(self, scope: Scope, receive: Receive, send: Send, limit: int, uploading: bool) -> None:
        seen, exceeded, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:  # whatever the app answers after the cut-off (a parse error), the client gets the 413
                return
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if exceeded and not started:
            await self._too_large(send, uploading)

    async def _too_large(self, send: Send, uploading: bool) -> None:
        if uploading:
            await _answer(send, 413, f"The upload is larger than the {self.max_upload_bytes}-byte limit "
                                     "(FT_MAX_UPLOAD_BYTES). Split it, or ask the operator to raise the limit.",
                          "file", "file_too_large")
        else:
            await _answer(send, 413, f"The request body is larger than the {self.max_body_bytes}-byte limit "
                                     "(FT_MAX_BODY_BYTES); send less per request (files go to POST /v1/files).",
                          None, "request_too_large")


async def _authenticate(header: bytes | None) -> tuple[keys.Caller | None, tuple[str, str | None, str] | None]:
    """(caller, None), or (None, (message, param, code)) saying why the request is refused."""
    value = header.decode("latin-1").strip() if header else ""
    if not value.lower().startswith("bearer ") or not value[7:].strip():
        return None, ("Missing API key: send 'Authorization: Bearer <key>'.", None, "missing_api_key")
    key = value[7:].strip()
    if len(key) > 256:  # no real key is this long; never hash megabytes of header
        return None, ("Invalid API key.", None, "invalid_api_key")
    # A remembered key needs no thread hop; a database lookup runs off the event loop.
    caller = keys.remembered(key) or await run_in_threadpool(keys.authenticate, key)
    if caller is None:
        return None, ("Invalid API key.", None, "invalid_api_key")
    if caller.expired():
        return None, ("This API key has expired; ask an admin of the project for a new one.", None,
                      "expired_api_key")
    return caller, None


async def _answer(send: Send, status: int, message: str, param: str | None, code: str) -> None:
    body = json.dumps(error_body(status, message, param, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), (b"x-error-message", header_value(message).encode())]})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
