"""Evaluations: score a base model, fine-tuned model or checkpoint on a file, on the workers, with progress,
events and cancel like a job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse

from app.api.deps import ProjectDep, SessionDep, SettingsDep
from app.api.presenters import evaluation_object, event_object
from app.schemas.common import ListPage, page_of
from app.schemas.evaluations import EvaluationCreate, EvaluationObject
from app.schemas.jobs import EventObject
from app.services import evaluations as service
from app.services.event_stream import follow
from app.services.jobs import list_events

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])


@router.post("", response_model=EvaluationObject)
def create_evaluation(body: EvaluationCreate, session: SessionDep, settings: SettingsDep,
                      project: ProjectDep) -> EvaluationObject:
    """Evaluate a model on a file of its task: checked first (400 naming the field), then queued for a worker.
    Counts against the project's active jobs."""
    return evaluation_object(service.create_evaluation(session, settings, project, body))


@router.get("", response_model=ListPage[EvaluationObject])
def list_evaluations(session: SessionDep, project: ProjectDep, file: str | None = None, model: str | None = None,
                     after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20):
    """The project's evaluations, newest first; `file` and `model` filter them, so evaluations of several
    models on one file read side by side."""
    return page_of(service.list_evaluations(session, project, file, model, after, limit), limit, evaluation_object)


@router.get("/{evaluation_id}", response_model=EvaluationObject)
def get_evaluation(evaluation_id: str, session: SessionDep, project: ProjectDep) -> EvaluationObject:
    """The evaluation, with its progress, and its metrics and result file once it has succeeded."""
    return evaluation_object(service.get_evaluation(session, project, evaluation_id))


@router.post("/{evaluation_id}/cancel", response_model=EvaluationObject)
def cancel_evaluation(evaluation_id: str, session: SessionDep, project: ProjectDep) -> EvaluationObject:
    """Cancel an evaluation: at once if no worker holds it, else after the worker's current batch."""
    return evaluation_object(service.cancel_evaluation(session, project, evaluation_id))


@router.get("/{evaluation_id}/events", response_model=ListPage[EventObject],
            responses={200: {"content": {"text/event-stream": {}}}})
def list_evaluation_events(evaluation_id: str, request: Request, session: SessionDep, settings: SettingsDep,
                           project: ProjectDep, after: str | None = None,
                           limit: Annotated[int, Query(ge=1, le=1000)] = 20, stream: bool = False,
                           last_event_id: Annotated[str | None, Header()] = None):
    """The evaluation's events, newest first; with `stream=true` (or `Accept: text/event-stream`) a live
    Server-Sent Events stream, resumable with `Last-Event-ID`, that ends after its last event."""
    job = service.get_evaluation(session, project, evaluation_id)
    if stream or "text/event-stream" in request.headers.get("accept", ""):
        slot = request.app.state.stream_slots.acquire(project)  # 429 past the project's open-stream quota
        start = int(last_event_id) if last_event_id and last_event_id.isdigit() and len(last_event_id) <= 18 else 0
        return EventSourceResponse(follow(job.id, start, request.app.state.event_bus, slot), ping=settings.sse_ping_s)
    return page_of(list_events(session, job, after, limit), limit, event_object)
