"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}`` with the right status.
Services raise :class:`ApiError`; app.api.errors turns it (and FastAPI's own errors) into responses."""

from __future__ import annotations

import math
import re
from typing import Any

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
    """404 ``<kind>_not_found`` (``kind`` in snake case: it is part of the code)."""
    return ApiError(404, f"No {kind.replace('_', ' ')} found with id '{ident}'.", param=param,
                    code=f"{kind}_not_found")


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


# An absolute filesystem path (two components or more), in a message written for a client.
_SERVER_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)+[\w.@+-]*")


def redact_paths(text: str) -> str:
    """Server paths out of a message meant for a client (job errors, events): they say how this machine is
    laid out, and whose folders are next to whose. The base name is kept: it is what a person needs."""
    return _SERVER_PATH.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
