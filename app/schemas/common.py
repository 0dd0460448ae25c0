from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class ListPage(BaseModel, Generic[T]):
    object: str = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


def page_of(items: list[Any], limit: int, key=lambda x: x.id) -> dict[str, Any]:
    """``items`` holds up to ``limit + 1`` rows: the extra one only says whether there is more."""
    data = items[:limit]
    return {"object": "list", "data": data, "has_more": len(items) > limit,
            "first_id": key(data[0]) if data else None, "last_id": key(data[-1]) if data else None}


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True
