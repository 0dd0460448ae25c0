from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from app.db.models import File


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

    @classmethod
    def of(cls, f: File) -> "FileObject":
        details = None
        if f.status == "error" and f.validation.get("errors"):
            details = f.validation["errors"][0]["message"]
        return cls(id=f.id, bytes=f.bytes, created_at=f.created_at, filename=f.filename, purpose=f.purpose,
                   status=f.status, status_details=details, format=f.format, rows=f.rows, columns=f.columns,
                   sha256=f.sha256, detected_task=f.detected_task, detected_column_mapping=f.detected_column_mapping,
                   validation=Validation(**f.validation))


class FilePreview(BaseModel):
    object: Literal["file.preview"] = "file.preview"
    id: str
    columns: list[str]
    rows: list[dict[str, Any]]
