"""Rows as the API shows them: the one place that turns ORM objects (or the plain rows of
app.services.reads, which carry the same attribute names) into response schemas (the schemas know no
ORM, the ORM knows no schemas)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel as Schema
from anyio import CapacityLimiter, to_thread
from starlette.responses import Response

from app.db.models import ApiKey, Checkpoint, File, FineTunedModel, Job, JobEvent, WebhookEndpoint
from app.jobs import improvement
from app.ml.base_models import BaseModel
from app.schemas.evaluations import EvaluationObject
from app.schemas.files import FileObject, Validation
from app.schemas.jobs import CheckpointObject, EventObject, JobError, JobObject, Progress
from app.schemas.keys import KeyObject
from app.schemas.models import ModelObject
from app.schemas.webhooks import WebhookEndpointObject, WebhookEndpointSummary
from app.services.keys import KEY_PREFIX


# Reads take a few hundred microseconds each: a few threads keep them all moving, where anyio's 40 (the
# default for sync routes) spend the time handing the GIL around (16 job GETs at once, in-process: 1.16
# ms each on 40 threads, 0.8-1.1 ms on 4-8). A slow read holds one of these, not the event loop.
_READERS = CapacityLimiter(8)


async def answer(read_and_present: Callable[[], Schema]) -> Response:
    """The JSON answer of a read route: the database read and its presentation run in one worker thread,
    and the schema is encoded once. A plain sync route with a session costs four thread hops — opening
    the session, the route, validating the answer against its response model, closing the session — and
    validates again an answer just built from that very schema; the hops were most of a job GET's CPU."""
    body = await to_thread.run_sync(lambda: read_and_present().model_dump_json().encode(), limiter=_READERS)
    return Response(body, media_type="application/json")


def file_object(record: File) -> FileObject:
    errors = record.validation.get("errors") if record.status == "error" else None
    details = errors[0]["message"] if errors else None
    return FileObject(id=record.id, bytes=record.bytes, created_at=record.created_at, filename=record.filename,
                      purpose=record.purpose, status=record.status, status_details=details,
                      format=record.format, rows=record.rows, columns=record.columns, sha256=record.sha256,
                      detected_task=record.detected_task, detected_column_mapping=record.detected_column_mapping,
                      validation=Validation(**record.validation))


def job_object(job: Job) -> JobObject:
    return JobObject(
        id=job.id, model=job.model, created_at=job.created_at, finished_at=job.finished_at, status=job.status,
        error=JobError(**job.error) if job.error else None, fine_tuned_model=job.fine_tuned_model,
        hyperparameters=job.hyperparameters, method=job.method, organization_id=job.project_id,
        result_files=job.result_files or [], seed=job.seed, trained_tokens=job.trained_tokens,
        training_file=job.training_file, validation_file=job.validation_file, metadata=job.metadata_,
        integrations=job.integrations or [], estimated_finish=job.estimated_finish, user_provided_suffix=job.suffix,
        task=job.task, column_mapping=job.column_mapping, progress=Progress(**job.progress) if job.progress else None,
        metrics=job.metrics, attempt=job.attempt, base_model=job.base_model or job.model,
        evaluation=improvement.evaluation_view(job.baseline_metrics, job.metrics))


def event_object(event: JobEvent) -> EventObject:
    return EventObject.model_validate(event, from_attributes=True)


def checkpoint_object(checkpoint: Checkpoint) -> CheckpointObject:
    return CheckpointObject(id=checkpoint.id, created_at=checkpoint.created_at,
                            fine_tuned_model_checkpoint=checkpoint.model_id, fine_tuning_job_id=checkpoint.job_id,
                            metrics=checkpoint.metrics, step_number=checkpoint.step)


def key_object(key: ApiKey) -> KeyObject:
    return KeyObject(id=key.id, name=key.name, scope=key.scope, redacted_value=f"{KEY_PREFIX}…{key.last4 or '????'}",
                     created_at=key.created_at, expires_at=key.expires_at, revoked_at=key.revoked_at)


def webhook_summary(endpoint: WebhookEndpoint) -> WebhookEndpointSummary:
    return WebhookEndpointSummary(id=endpoint.id, url=endpoint.url, events=list(endpoint.events or []),
                                  description=endpoint.description or "", created_at=endpoint.created_at)


def webhook_object(endpoint: WebhookEndpoint) -> WebhookEndpointObject:
    return WebhookEndpointObject(**webhook_summary(endpoint).model_dump(), secret=endpoint.secret)


def model_object(model: BaseModel | FineTunedModel) -> ModelObject:
    if isinstance(model, BaseModel):
        return ModelObject(id=model.id, created=0, owned_by="system", kind="base", model_type=model.model_type,
                           fine_tunable=model.usable, problem=model.problem)
    return ModelObject(id=model.id, created=model.created_at, owned_by=model.project_id, kind="fine-tuned",
                       base_model=model.base_model, task=model.task, job_id=model.job_id, bytes=model.bytes,
                       parent=model.parent)


def evaluation_object(job: Job) -> EvaluationObject:
    options = job.hyperparameters or {}
    return EvaluationObject(id=job.id, model=job.model, base_model=job.base_model or job.model,
                            reference_model=options.get("reference_model"), file=job.training_file, task=job.task,
                            status=job.status, metrics=job.metrics, result_files=job.result_files or [],
                            progress=Progress(**job.progress) if job.progress else None,
                            error=JobError(**job.error) if job.error else None, note=options.get("note"),
                            created_at=job.created_at, finished_at=job.finished_at)
