"""Every error answered in OpenAI's shape with the right status: :class:`ApiError` from the services,
and FastAPI's own validation errors translated so that ``param`` names the offending field in dotted
form (``column_mapping.label``) — never a 500 with details, never a bare 422."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ApiError, error_body, header_value

log = logging.getLogger(__name__)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    # huggingface_hub clients read the message from this header (the body's "error" is OpenAI-shaped).
    headers = {**(headers or {}), "X-Error-Message": header_value(message)}
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


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
        message = first.get("msg", "Invalid request.")
        if first.get("type") == "extra_forbidden":
            message = f"Unknown field '{param}'. Remove it or check its spelling."
        elif first.get("type") == "missing":
            message = f"Missing required field '{param}'."
        elif param:
            # A union (e.g. a number or "auto") reports one error per member: say them all.
            alternatives = [e["msg"] for e in exc.errors() if _loc_to_param(tuple(e.get("loc", ()))) == param]
            message = f"Invalid value for '{param}': {' or '.join(dict.fromkeys(alternatives))}."
        return error_response(400, message, param, first.get("type"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), None, None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "Internal server error; the request was not applied.", None, "internal_error")
