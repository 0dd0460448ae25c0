"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}`` with the right status.

Services raise :class:`ApiError`; FastAPI's own validation errors are translated so that ``param``
names the offending field in dotted form (``column_mapping.label``) — never a 500, never a bare 422."""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(kind: str, ident: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"No {kind} found with id '{ident}'.", param=param, code=f"{kind}_not_found")


def over_quota(message: str, param: str | None = None, retry_after_s: float = 60) -> ApiError:
    """429 in OpenAI's shape (code ``rate_limit_exceeded``), with ``Retry-After`` in whole seconds."""
    return ApiError(429, message, param=param, code="rate_limit_exceeded",
                    headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "api_error"), "param": param, "code": code}}


def header_value(text: str, limit: int = 1000) -> str:
    """``text`` as an HTTP header may carry it: printable ASCII only. Messages quote what the client sent
    (an id with control characters, say), and one invalid header would turn the answer into a dropped
    connection."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    # huggingface_hub clients read the message from this header (the body's "error" is OpenAI-shaped).
    headers = {**(headers or {}), "X-Error-Message": header_value(message)}
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


# An absolute filesystem path (two components or more), in a message written for a client.
_SERVER_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)+[\w.@+-]*")


def redact_paths(text: str) -> str:
    """Server paths out of a message meant for a client (job errors, events): they say how this machine is
    laid out, and whose folders are next to whose. The base name is kept: it is what a person needs."""
    return _SERVER_PATH.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


_UNION_TAG = re.compile(r"^(int|float|str|bool|none|dict|list|.*\[.*\])$")


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    # ("body", "column_mapping", "label") → "column_mapping.label"; list indices become [i]; the names
    # pydantic gives union members ("int", "literal['auto']") are not fields and are dropped.
    parts = [p for p in loc if p not in ("body", "query", "path", "header", "form")
             and not (isinstance(p, str) and _UNION_TAG.match(p))]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "Invalid request."}
        param = _loc_to_param(tuple(first.get("loc", ())))
        msg = first.get("msg", "Invalid request.")
        if first.get("type") == "extra_forbidden":
            msg = f"Unknown field '{param}'. Remove it or check its spelling."
        elif first.get("type") == "missing":
            msg = f"Missing required field '{param}'."
        elif param:
            # A union (e.g. a number or "auto") reports one error per member: say them all.
            alternatives = [e["msg"] for e in exc.errors() if _loc_to_param(tuple(e.get("loc", ()))) == param]
            msg = f"Invalid value for '{param}': {' or '.join(dict.fromkeys(alternatives))}."
        return error_response(400, msg, param, first.get("type"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), None, None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "Internal server error; the request was not applied.", None, "internal_error")
