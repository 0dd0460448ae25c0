"""The models a project can use: base models on offer and its own fine-tuned ones."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Checkpoint, FineTunedModel, Job
from app.errors import ApiError, bad_request, not_found
from app.ml.base_models import BaseModel, list_base_models
from app.services.keys import ProjectRef


def list_models(session: Session, settings: Settings, project: ProjectRef) -> list[BaseModel | FineTunedModel]:
    """The base models on offer, then the project's fine-tuned ones, newest first."""
    tuned = session.scalars(select(FineTunedModel).where(FineTunedModel.project_id == project.id)
                            .order_by(FineTunedModel.created_at.desc()))
    return [*list_base_models(settings).values(), *tuned]


def get_fine_tuned(session: Session, project: ProjectRef, model_id: str) -> FineTunedModel | None:
    model = session.get(FineTunedModel, model_id)
    return model if model is not None and model.project_id == project.id else None


def get_model(session: Session, settings: Settings, project: ProjectRef, model_id: str) -> BaseModel | FineTunedModel:
    tuned = get_fine_tuned(session, project, model_id)
    if tuned:
        return tuned
    base = list_base_models(settings).get(model_id)
    if base:
        return base
    raise not_found("model", model_id, "model")


@dataclass(frozen=True)
class Servable:
    """Something predictions can be served from: a fine-tuned model or one of its checkpoints."""

    id: str
    task: str
    storage_key: str
    base_model: str


def require_fine_tuned(session: Session, settings: Settings, project: ProjectRef, model_id: str) -> Servable:
    tuned = get_fine_tuned(session, project, model_id)
    if tuned is not None:
        return Servable(tuned.id, tuned.task, tuned.storage_key, tuned.base_model)
    checkpoint = session.scalar(select(Checkpoint).where(Checkpoint.model_id == model_id,
                                                         Checkpoint.project_id == project.id))
    if checkpoint is not None:
        job = session.get(Job, checkpoint.job_id)
        return Servable(checkpoint.model_id, job.task, checkpoint.storage_key, job.model)
    if model_id in list_base_models(settings):
        raise bad_request(f"'{model_id}' is a base model; predictions are served by fine-tuned models "
                          "(ft:…). Fine-tune it first.", "model", code="model_not_fine_tuned")
    raise not_found("model", model_id, "model")


def delete_model(session: Session, settings: Settings, project: ProjectRef, model_id: str) -> list[Servable]:
    """Deletes a fine-tuned model and its job's checkpoints (each one was servable and downloadable on
    its own). Returns what was deleted, for the caller to unload and remove from storage once the
    deletion has committed."""
    tuned = get_fine_tuned(session, project, model_id)
    if tuned is None:
        if model_id in list_base_models(settings):
            raise ApiError(400, "Base models cannot be deleted through the API; remove their folder instead.",
                           param="model", code="model_not_deletable")
        raise not_found("model", model_id, "model")
    deleted = [Servable(tuned.id, tuned.task, tuned.storage_key, tuned.base_model)]
    for checkpoint in session.scalars(select(Checkpoint).where(Checkpoint.job_id == tuned.job_id)):
        deleted.append(Servable(checkpoint.model_id, tuned.task, checkpoint.storage_key, tuned.base_model))
        session.delete(checkpoint)
    session.delete(tuned)
    session.flush()
    return deleted


def base_model_path(settings: Settings, servable: Servable):
    """Where this deployment keeps the servable's base model (adapters are loaded onto it)."""
    base = list_base_models(settings, max_age_s=30).get(servable.base_model)
    return base.path if base is not None else None
