from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi.responses import FileResponse

from app.api.deps import ProjectDep, SessionDep, SettingsDep, StorageDep
from app.errors import ApiError
from app.schemas.common import Deleted, ListPage, page_of
from app.schemas.files import FileObject, FilePreview
from app.services import files as service

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", response_model=FileObject)
async def upload_file(session: SessionDep, storage: StorageDep, settings: SettingsDep, project: ProjectDep,
                      file: UploadFile | None = None, purpose: Annotated[str, Form()] = "fine-tune") -> FileObject:
    if file is None:
        raise ApiError(400, "Send the dataset as the multipart field 'file'.", param="file", code="missing_file")
    record = await service.ingest(session, storage, project, file, file.filename or "upload", purpose,
                                  settings.max_upload_bytes)
    return FileObject.of(record)


@router.get("", response_model=ListPage[FileObject])
def list_files(session: SessionDep, project: ProjectDep, after: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 20, purpose: str | None = None):
    page = page_of(service.list_files(session, project, after, limit, purpose), limit)
    page["data"] = [FileObject.of(f) for f in page["data"]]
    return page


@router.get("/{file_id}", response_model=FileObject)
def get_file(file_id: str, session: SessionDep, project: ProjectDep) -> FileObject:
    return FileObject.of(service.get_file(session, project, file_id))


@router.get("/{file_id}/content")
def file_content(file_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep) -> FileResponse:
    record = service.get_file(session, project, file_id)
    return FileResponse(storage.local_path(record.storage_key), filename=record.filename,
                        media_type="application/octet-stream")


@router.get("/{file_id}/preview", response_model=FilePreview)
def preview_file(file_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep, settings: SettingsDep,
                 limit: Annotated[int, Query(ge=1)] = 10) -> FilePreview:
    record = service.get_file(session, project, file_id)
    rows = service.preview(storage, record, min(limit, settings.preview_max_rows))
    return FilePreview(id=record.id, columns=record.columns, rows=rows)


@router.delete("/{file_id}", response_model=Deleted)
def delete_file(file_id: str, session: SessionDep, project: ProjectDep, storage: StorageDep) -> Deleted:
    service.delete_file(session, storage, project, file_id)
    return Deleted(id=file_id, object="file")
