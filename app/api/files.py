"""Datasets: OpenAI's file routes (upload, list, retrieve, content, delete), plus a preview."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from app.api.deps import ProjectDep, SessionDep, SettingsDep, StorageDep
from app.api.presenters import answer, file_object
from app.api.upload_stream import UploadStream
from app.schemas.common import Deleted, ListPage, page_of
from app.schemas.files import FileObject, FilePreview
from app.services import files as service
from app.services import reads
from app.services.quotas import upload_allowance

router = APIRouter(prefix="/v1/files", tags=["files"])


# The body is read by the route itself (not declared as File/Form parameters, which FastAPI would read
# first): the project's file and storage quotas are checked before a byte of the upload is read, and
# the file goes from the network to storage in one pass (upload_stream.py).
_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "CSV, TSV, JSONL or Parquet."},
                   "purpose": {"type": "string", "enum": ["fine-tune"], "default": "fine-tune"}}}}}}}


@router.post("", response_model=FileObject, openapi_extra=_UPLOAD_BODY)
async def upload_file(request: Request, session: SessionDep, storage: StorageDep, settings: SettingsDep,
                      project: ProjectDep) -> FileObject:
    """Upload a dataset (CSV, TSV, JSONL or Parquet, recognised by content). It is scanned once, streaming:
    the answer has its rows, columns, detected task and column mapping, and every problem found with its
    line and column (status `error` when there are errors)."""
    allowance = await run_in_threadpool(upload_allowance, session, project)
    body = UploadStream(request)
    try:
        await body.open()
        # Written to storage as it arrives, within the smaller of the upload limit and the quota left.
        record = await service.ingest(session, storage, project, body, body.filename or "upload",
                                      body.fields.get("purpose"), min(settings.max_upload_bytes, allowance),
                                      rest_of_body=body.finish,
                                      quota_bound=allowance < settings.max_upload_bytes)
    except Exception:
        await body.discard()
        raise
    return file_object(record)


@router.get("", response_model=ListPage[FileObject])
def list_files(session: SessionDep, project: ProjectDep, after: str | None = None,
               limit: Annotated[int, Query(ge=1, le=100)] = 20, purpose: str | None = None):
    """The project's files, newest first."""
    return page_of(service.list_files(session, project, after, limit, purpose), limit, file_object)


@router.get("/{file_id}", response_model=FileObject)
async def get_file(file_id: str, project: ProjectDep) -> Response:
    """The file, with its validation report."""
    return await answer(lambda: file_object(reads.file(project, file_id)))


@router.get("/{file_id}/content", response_class=FileResponse, responses={200: {
    "description": "The file as uploaded.",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
def file_content(file_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep) -> FileResponse:
    """The file's bytes, as uploaded (result files: the metrics CSV)."""
    record = service.get_file(session, project, file_id)
    return FileResponse(storage.local_path(record.storage_key), filename=record.filename,
                        media_type="application/octet-stream")


@router.get("/{file_id}/preview", response_model=FilePreview)
def preview_file(file_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep, settings: SettingsDep,
                 limit: Annotated[int, Query(ge=1)] = 10) -> FilePreview:
    """The first rows, typed as training reads them (long values clipped)."""
    record = service.get_file(session, project, file_id)
    rows = service.preview(storage, record, min(limit, settings.preview_max_rows))
    return FilePreview(id=record.id, columns=record.columns, rows=rows)


@router.delete("/{file_id}", response_model=Deleted)
def delete_file(file_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep) -> Deleted:
    """Delete the file (409 while a job that has not ended uses it)."""
    service.delete_file(session, storage, project, file_id)
    return Deleted(id=file_id, object="file")
