"""Ingest an uploaded dataset: stream it to storage, scan it once, keep the profile and the report."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.config import get_settings
from app.data.fast.feed import Feed, Tee, UploadAborted
from app.data.scan import FORMATS, ScanLimits, iter_records, scan_arriving, scan_file
from app.db.engine import after_commit
from app.db.models import File, Job
from app.errors import ApiError, not_found
from app.ids import new_id
from app.jobs.naming import file_key
from app.jobs.states import TERMINAL
from app.ml.tasks import detect_task
from app.services.keys import ProjectRef
from app.services.quotas import storage_exceeded
from app.storage import Storage, TooLarge

PURPOSES = ("fine-tune",)
# A preview shows what a file holds, not all of it: a response stays small whatever the cells are.
PREVIEW_MAX_CHARS = 2_000
PREVIEW_MAX_ITEMS = 50
PREVIEW_MAX_TOTAL = 1_000_000  # characters and items in all rows shown; past it, no further row is added


async def ingest(session: Session, storage: Storage, project: ProjectRef, upload: BinaryIO, filename: str,
                 purpose: str | None, max_bytes: int, limits: ScanLimits | None = None, *,
                 rest_of_body: Callable[[], Awaitable[dict[str, str]]] | None = None,
                 quota_bound: bool = False) -> File:
    """Store and scan an upload. ``upload`` is read once, as it arrives (``read`` may be async);
    ``rest_of_body``, for a body that goes on after the file, reads it and returns the text fields (a
    purpose sent after the file counts). Past ``max_bytes``: 413, or the storage quota's 429 when the
    quota is what set it (``quota_bound``)."""
    if purpose:
        _check_purpose(purpose)
    file_id = new_id("file")  # time-ordered: lists page by id
    key = file_key(project.id, file_id)
    limits = limits or ScanLimits.from_settings(get_settings())
    # The scan reads the bytes as they arrive, on a thread of its own, while storage writes them.
    feed = Feed(asyncio.get_running_loop())
    scanning = asyncio.ensure_future(run_in_threadpool(_scan_arriving, feed, filename, limits))
    try:
        blob = await storage.save_upload(key, Tee(upload, feed), max_bytes)
        feed.end()
    except BaseException as exc:
        feed.abort()  # the scan stops at its next read
        if isinstance(exc, asyncio.CancelledError):
            raise
        await asyncio.wait([scanning])
        if not isinstance(exc, TooLarge):
            raise
        if quota_bound:
            raise storage_exceeded(project) from None
        raise ApiError(413, f"The file is larger than the {max_bytes}-byte limit (FT_MAX_UPLOAD_BYTES). Split it "
                            "or ask the operator to raise the limit.", param="file", code="file_too_large") from None
    try:
        if rest_of_body is not None:
            purpose = (await rest_of_body()).get("purpose") or purpose
        purpose = purpose or "fine-tune"
        _check_purpose(purpose)
        # What the fast path hands over is read again, stored, by the exact path (off the event loop).
        scan = await scanning or await run_in_threadpool(scan_file, storage.local_path(key), filename, limits,
                                                         exact=True)
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


def _scan_arriving(feed: Feed, filename: str, limits: ScanLimits):
    try:
        return scan_arriving(feed, filename, limits)
    except UploadAborted:
        return None
    finally:
        feed.close()  # finished, or handing over: the upload no longer waits for the scan


def _check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise ApiError(400, f"purpose must be one of: {', '.join(PURPOSES)}.", param="purpose")


def _warn_missing(scan, mapping: dict[str, str]) -> None:
    for role, column in mapping.items():
        stats = scan.stats[column]
        for line in stats.null_lines:
            scan.warn(f"Missing value in the {role} column '{column}'.", line=line, column=column)


def get_file(session: Session, project: ProjectRef, file_id: str, param: str | None = None) -> File:
    record = session.get(File, file_id)
    if record is None or record.project_id != project.id:
        raise not_found("file", file_id, param)
    return record


def list_files(session: Session, project: ProjectRef, after: str | None, limit: int, purpose: str | None) -> list[File]:
    query = select(File).where(File.project_id == project.id)
    if purpose:
        query = query.where(File.purpose == purpose)
    if after:
        anchor = get_file(session, project, after, "after")
        query = query.where(File.id < anchor.id)
    return list(session.scalars(query.order_by(File.id.desc()).limit(limit + 1)))


def delete_file(session: Session, storage: Storage, project: ProjectRef, file_id: str) -> None:
    record = get_file(session, project, file_id)
    in_use = session.scalar(select(Job.id).where(
        or_(Job.training_file == file_id, Job.validation_file == file_id), Job.status.not_in(TERMINAL)).limit(1))
    if in_use:
        raise ApiError(409, f"File {file_id} is used by job {in_use}, which has not finished. Cancel the job or "
                            "wait for it to end.", param="file_id", code="file_in_use")
    session.delete(record)
    session.flush()
    after_commit(session, lambda: storage.delete(record.storage_key))  # the bytes go once the row has


def preview(storage: Storage, record: File, limit: int, limits: ScanLimits | None = None) -> list[dict[str, Any]]:
    if record.format not in FORMATS:
        return []
    rows = iter_records(storage.local_path(record.storage_key), record.format,
                        limits or ScanLimits.from_settings(get_settings()))
    shown: list[dict[str, Any]] = []
    size = [0]  # characters and items shown so far
    for row in itertools.islice(rows, limit):
        shown.append({name: clip_for_preview(value, size) for name, value in row.items()})
        if size[0] > PREVIEW_MAX_TOTAL:
            break  # fewer rows rather than a response of megabytes
    return shown


def clip_for_preview(value: Any, size: list[int]) -> Any:
    """A value as a preview shows it: long text cut to PREVIEW_MAX_CHARS with "…", long lists and
    objects to PREVIEW_MAX_ITEMS with a "…" entry; size[0] counts what is shown. Recursion is safe:
    the scan bounded the nesting."""
    if isinstance(value, str):
        clipped = value if len(value) <= PREVIEW_MAX_CHARS else value[:PREVIEW_MAX_CHARS] + "…"
        size[0] += len(clipped)
        return clipped
    size[0] += 1
    if isinstance(value, bytes):  # Parquet binary: not text, and not JSON either
        return f"<{len(value):,} bytes>"
    if isinstance(value, (list, tuple)):
        items = [clip_for_preview(item, size) for item in value[:PREVIEW_MAX_ITEMS]]
        return items + ["…"] if len(value) > PREVIEW_MAX_ITEMS else items
    if isinstance(value, dict):
        clipped = {key: clip_for_preview(item, size)
                   for key, item in itertools.islice(value.items(), PREVIEW_MAX_ITEMS)}
        if len(value) > PREVIEW_MAX_ITEMS:
            clipped["…"] = f"{len(value) - PREVIEW_MAX_ITEMS} more"
        return clipped
    return value
