"""Fine-tuning jobs: OpenAI's fine-tuning routes, plus estimates, pause/resume, live events and metrics."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from app.api.deps import ProjectDep, SessionDep, SettingsDep
from app.api.presenters import answer, checkpoint_object, event_object, job_object
from app.jobs.results import metrics_series
from app.schemas.common import ListPage, page_of
from app.schemas.jobs import CheckpointObject, EventObject, JobCreate, JobEstimate, JobMetrics, JobObject
from app.services import jobs as service
from app.services import reads
from app.services.estimates import estimate
from app.services.event_stream import follow
from app.services.job_planning import plan_job

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
_METADATA_PARAM = re.compile(r"^metadata\[(.+)\]$")


@router.post("", response_model=JobObject)
def create_job(body: JobCreate, session: SessionDep, settings: SettingsDep, project: ProjectDep,
               idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> JobObject:
    """Create a job, checked against its files and base model first (400 naming the field); queued for a
    worker once it is stored. The same Idempotency-Key and body return the same job."""
    return job_object(service.create_job(session, settings, project, body, idempotency_key))


@router.post("/estimate", response_model=JobEstimate)
def estimate_job(body: JobCreate, session: SessionDep, settings: SettingsDep, project: ProjectDep) -> JobEstimate:
    """What the job would take (steps, tokens, seconds per device kind), checked like a real job but
    never created."""
    return JobEstimate(**estimate(session, project, plan_job(session, settings, project, body)))


@router.get("", response_model=ListPage[JobObject])
async def list_jobs(request: Request, project: ProjectDep, after: str | None = None,
                    limit: Annotated[int, Query(ge=1, le=100)] = 20, status: str | None = None) -> Response:
    """The project's jobs, newest first; filter by `status` and by `metadata[key]=value`."""
    metadata = {m.group(1): v for k, v in request.query_params.items() if (m := _METADATA_PARAM.match(k))}
    return await answer(lambda: ListPage[JobObject](
        **page_of(reads.jobs(project, after, limit, status, metadata), limit, job_object)))


@router.get("/{job_id}", response_model=JobObject)
async def get_job(job_id: str, project: ProjectDep) -> Response:
    """The job, with its progress (step, percent, ETA, throughput) and latest metrics."""
    return await answer(lambda: job_object(reads.job(project, job_id)))


@router.post("/{job_id}/cancel", response_model=JobObject)
def cancel_job(job_id: str, session: SessionDep, project: ProjectDep) -> JobObject:
    """Cancel a job: at once if no worker holds it, else at the worker's next step."""
    return job_object(service.cancel_job(session, project, job_id))


@router.post("/{job_id}/pause", response_model=JobObject)
def pause_job(job_id: str, session: SessionDep, project: ProjectDep) -> JobObject:
    """Pause a job: a running one saves a checkpoint and stops; resume continues from it."""
    return job_object(service.pause_job(session, project, job_id))


@router.post("/{job_id}/resume", response_model=JobObject)
def resume_job(job_id: str, session: SessionDep, project: ProjectDep) -> JobObject:
    """Queue a paused job again; it continues from its last checkpoint."""
    return job_object(service.resume_job(session, project, job_id))


@router.get("/{job_id}/events", response_model=ListPage[EventObject],
            responses={200: {"content": {"text/event-stream": {}}}})
async def list_events(job_id: str, request: Request, settings: SettingsDep, project: ProjectDep,
                      after: str | None = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 20, stream: bool = False,
                      last_event_id: Annotated[str | None, Header()] = None) -> Response:
    """The job's events, newest first; with `stream=true` (or `Accept: text/event-stream`) a live
    Server-Sent Events stream, resumable with `Last-Event-ID`, that ends after the job's last event."""
    if stream or "text/event-stream" in request.headers.get("accept", ""):
        job = await run_in_threadpool(reads.job, project, job_id)  # a 404 before the stream starts
        # 429 past the project's open-stream quota. The stream holds no database connection while it
        # waits: the process's event bus wakes it (app.services.event_bus).
        slot = request.app.state.stream_slots.acquire(project)
        start = int(last_event_id) if last_event_id and last_event_id.isdigit() and len(last_event_id) <= 18 else 0
        return EventSourceResponse(follow(job.id, start, request.app.state.event_bus, slot), ping=settings.sse_ping_s)
    return await answer(lambda: ListPage[EventObject](
        **page_of(reads.events(project, job_id, after, limit), limit, event_object)))


@router.get("/{job_id}/checkpoints", response_model=ListPage[CheckpointObject])
def list_checkpoints(job_id: str, session: SessionDep, project: ProjectDep, after: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=100)] = 10):
    """The job's checkpoints, newest first; each is servable as `fine_tuned_model_checkpoint`."""
    job = service.get_job(session, project, job_id)
    return page_of(service.list_checkpoints(session, job, after, limit), limit, checkpoint_object)


@router.get("/{job_id}/metrics", response_model=JobMetrics)
def job_metrics(job_id: str, session: SessionDep, project: ProjectDep) -> JobMetrics:
    """The job's whole per-step series: training loss, learning rate, throughput and evaluation metrics."""
    job = service.get_job(session, project, job_id)
    return JobMetrics(job_id=job.id, data=metrics_series(session, job))
