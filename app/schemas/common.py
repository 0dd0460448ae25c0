from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class ListPage(BaseModel, Generic[T]):
    object: str = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


def page_of(items: list[Any], limit: int, present: Callable[[Any], Any] = lambda row: row) -> dict[str, Any]:
    """One page of a list, each row as ``present`` shows it. ``items`` holds up to ``limit + 1`` rows: the
    extra one only says whether there is more."""
    rows = items[:limit]
    return {"object": "list", "data": [present(row) for row in rows], "has_more": len(items) > limit,
            "first_id": rows[0].id if rows else None, "last_id": rows[-1].id if rows else None}


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


_ERRORS = {400: "Invalid request: `param` names the field, `message` says what to change.",
           401: "Missing, invalid, revoked or expired API key.",
           403: "The API key's scope does not allow this call.",
           404: "No such object in the key's project.",
           409: "The object's state does not allow this call.",
           413: "The request body is larger than its limit.",
           429: "Over a quota or rate limit of the project: see the Retry-After header.",
           503: "A dependency is unavailable; retry later."}
# Declared on every route, so the OpenAPI document (and generated clients) know the answers they may get.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description} for status, description in _ERRORS.items()}
