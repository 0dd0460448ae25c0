from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel



class Problem(BaseModel):
    line: int | None = None
    column: str | None = None
    message: str


class Validation(BaseModel):
    errors: list[Problem] = []
    warnings: list[Problem] = []
    errors_not_listed: int | None = None


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed", "error"]
    status_details: str | None = None
    format: str | None
    rows: int
    columns: list[str]
    sha256: str
    detected_task: str | None
    detected_column_mapping: dict[str, str] | None = None
    validation: Validation


class FilePreview(BaseModel):
    object: Literal["file.preview"] = "file.preview"
    id: str
    columns: list[str]
    rows: list[dict[str, Any]]
