"""Ingest an uploaded dataset: stream it to storage, scan it once, keep the profile and the report."""

from __future__ import annotations

import itertools
from typing import Any, BinaryIO

from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.data.scan import FORMATS, iter_records, scan_file
from app.db.models import File, Job, Project
from app.db.transitions import TERMINAL
from app.errors import ApiError, not_found
from app.ids import new_id
from app.ml.tasks import detect_task
from app.storage import LocalStorage, TooLarge

PURPOSES = ("fine-tune",)

async def ingest(session: Session, storage: LocalStorage, project: Project, upload: BinaryIO, filename: str,
                 purpose: str, max_bytes: int) -> File:
    if purpose not in PURPOSES:
        raise ApiError(400, f"purpose must be one of: {', '.join(PURPOSES)}.", param="purpose")
    file_id = new_id("file")  # time-ordered: lists page by id
    key = f"files/{project.id}/{file_id}"
    try:
        blob = await storage.save_upload(key, upload, max_bytes)
    except TooLarge:
        raise ApiError(413, f"The file is larger than the {max_bytes}-byte limit (FT_MAX_UPLOAD_BYTES). "
                            "Split it or ask the operator to raise the limit.", param="file", code="file_too_large")
    try:
        # Scanning reads the whole file: off the event loop, so other requests are served meanwhile.
        scan = await run_in_threadpool(scan_file, storage.local_path(key), filename)
        detected = detect_task(scan.profile()) if not scan.errors else None
        if detected is None and not scan.errors:
            scan.warn("No task could be detected from the columns; give 'task' and 'column_mapping' when "
                      "creating a job.")
        elif detected:
            _warn_missing(scan, detected[1])
        record = File(
            id=file_id, project_id=project.id, filename=filename[:500], purpose=purpose, bytes=blob.bytes,
            sha256=blob.sha256, format=scan.format, rows=scan.rows, columns=scan.columns, profile=scan.profile(),
            detected_task=detected[0] if detected else None, detected_column_mapping=detected[1] if detected else None,
            validation=scan.validation(), status="error" if scan.errors else "processed", storage_key=key,
        )
        session.add(record)
        session.flush()
    except BaseException:
        storage.delete(key)  # nothing half-made: no row without bytes, no bytes without a row
        raise
    return record


def _warn_missing(scan, mapping: dict[str, str]) -> None:
    for role, column in mapping.items():
        stats = scan.stats[column]
        for line in stats.null_lines:
            scan.warn(f"Missing value in the {role} column '{column}'.", line=line, column=column)


def get_file(session: Session, project: Project, file_id: str, param: str | None = None) -> File:
    record = session.get(File, file_id)
    if record is None or record.project_id != project.id:
        raise not_found("file", file_id, param)
    return record


def list_files(session: Session, project: Project, after: str | None, limit: int, purpose: str | None) -> list[File]:
    query = select(File).where(File.project_id == project.id)
    if purpose:
        query = query.where(File.purpose == purpose)
    if after:
        anchor = get_file(session, project, after, "after")
        query = query.where(File.id < anchor.id)
    return list(session.scalars(query.order_by(File.id.desc()).limit(limit + 1)))


def delete_file(session: Session, storage: LocalStorage, project: Project, file_id: str) -> None:
    record = get_file(session, project, file_id)
    in_use = session.scalar(select(Job.id).where(
        or_(Job.training_file == file_id, Job.validation_file == file_id), Job.status.not_in(TERMINAL)).limit(1))
    if in_use:
        raise ApiError(409, f"File {file_id} is used by job {in_use}, which has not finished. Cancel the job or "
                            "wait for it to end.", param="file_id", code="file_in_use")
    session.delete(record)
    session.flush()
    storage.delete(record.storage_key)


def preview(storage: LocalStorage, record: File, limit: int) -> list[dict[str, Any]]:
    if record.format not in FORMATS:
        return []
    return list(itertools.islice(iter_records(storage.local_path(record.storage_key), record.format), limit))
