from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse

from app.api.deps import ProjectDep, SessionDep, SettingsDep
from app.schemas.common import ListPage, page_of
from app.schemas.jobs import CheckpointObject, EventObject, JobCreate, JobObject
from app.services import jobs as service
from app.services.estimates import estimate
from app.services.event_stream import follow

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
_METADATA_PARAM = re.compile(r"^metadata\[(.+)\]$")


@router.post("", response_model=JobObject)
def create_job(body: JobCreate, session: SessionDep, settings: SettingsDep, project: ProjectDep,
               idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> JobObject:
    job, created = service.create_job(session, settings, project, body, idempotency_key)
    if created:
        session.commit()  # enqueue strictly after the row is durable
        service.enqueue(settings, job.id, job.devices)
    return JobObject.of(job)


@router.post("/estimate")
def estimate_job(body: JobCreate, session: SessionDep, settings: SettingsDep, project: ProjectDep) -> dict:
    """What the job would take (steps, tokens, seconds per device kind), checked like a real job but
    never created."""
    return estimate(session, project, service.plan_job(session, settings, project, body))


@router.get("", response_model=ListPage[JobObject])
def list_jobs(request: Request, session: SessionDep, project: ProjectDep, after: str | None = None,
              limit: Annotated[int, Query(ge=1, le=100)] = 20, status: str | None = None):
    metadata = {m.group(1): v for k, v in request.query_params.items() if (m := _METADATA_PARAM.match(k))}
    page = page_of(service.list_jobs(session, project, after, limit, status, metadata), limit)
    page["data"] = [JobObject.of(j) for j in page["data"]]
    return page


@router.get("/{job_id}", response_model=JobObject)
def get_job(job_id: str, session: SessionDep, project: ProjectDep) -> JobObject:
    return JobObject.of(service.get_job(session, project, job_id))


@router.post("/{job_id}/cancel", response_model=JobObject)
def cancel_job(job_id: str, session: SessionDep, project: ProjectDep) -> JobObject:
    return JobObject.of(service.cancel_job(session, project, job_id))


@router.post("/{job_id}/pause", response_model=JobObject)
def pause_job(job_id: str, session: SessionDep, project: ProjectDep) -> JobObject:
    return JobObject.of(service.pause_job(session, project, job_id))


@router.post("/{job_id}/resume", response_model=JobObject)
def resume_job(job_id: str, session: SessionDep, settings: SettingsDep, project: ProjectDep) -> JobObject:
    job = service.resume_job(session, project, job_id)
    session.commit()
    service.enqueue(settings, job.id, job.devices)
    return JobObject.of(job)


@router.get("/{job_id}/events", response_model=ListPage[EventObject],
            responses={200: {"content": {"text/event-stream": {}}}})
def list_events(job_id: str, request: Request, session: SessionDep, settings: SettingsDep, project: ProjectDep,
                after: str | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 20, stream: bool = False,
                last_event_id: Annotated[str | None, Header()] = None):
    job = service.get_job(session, project, job_id)
    if stream or "text/event-stream" in request.headers.get("accept", ""):
        slot = request.app.state.stream_slots.acquire(project)  # 429 past the project's open-stream quota
        session.commit()  # gives the connection back: the stream polls with short sessions of its own
        start = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        return EventSourceResponse(follow(job.id, start, slot), ping=settings.sse_ping_s)
    page = page_of(service.list_events(session, job, after, limit), limit)
    page["data"] = [EventObject.model_validate(e, from_attributes=True) for e in page["data"]]
    return page


@router.get("/{job_id}/checkpoints", response_model=ListPage[CheckpointObject])
def list_checkpoints(job_id: str, session: SessionDep, project: ProjectDep, after: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=100)] = 10):
    job = service.get_job(session, project, job_id)
    page = page_of(service.list_checkpoints(session, job, after, limit), limit)
    page["data"] = [CheckpointObject.of(c) for c in page["data"]]
    return page


@router.get("/{job_id}/metrics")
def job_metrics(job_id: str, session: SessionDep, project: ProjectDep) -> dict:
    job = service.get_job(session, project, job_id)
    return {"object": "list", "job_id": job.id, "data": service.metrics_series(session, job)}
