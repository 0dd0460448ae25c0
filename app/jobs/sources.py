"""What a job or an evaluation starts from: a base model this deployment offers, or one of the project's
own fine-tuned models or checkpoints (OpenAI's "fine-tune a fine-tuned model", Together's
``from_checkpoint``). One lookup for the API, which checks a request against it, and for the worker,
which loads the weights it names.

Lineage always ends at a base model: a model trained from ``ft:…`` keeps that model's base, so its
LoRA adapter is served on the same base and its own children find it too."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Checkpoint, FineTunedModel, Job
from app.ml.base_models import BaseModel, list_base_models


class SourceProblem(Exception):
    """The model cannot be started from; ``code`` is the API error code, the message says what to do."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class ModelSource:
    id: str  # as the client named it: a base model id, ``ft:…``, ``ft:…:ckpt-step-N`` or ``ftckpt-…``
    base: BaseModel  # the base model at the root of its lineage
    # What a fine-tuned model or checkpoint brings (all None / empty for a base model):
    model_id: str | None = None  # its servable id (a checkpoint given as ``ftckpt-…`` has one too)
    task: str | None = None
    storage_key: str | None = None  # where its weights are
    job_id: str | None = None  # the job that trained it
    plan: dict[str, Any] = field(default_factory=dict)  # that job's training plan (labels, chat template)
    adapter: dict[str, Any] | None = None  # its unmerged LoRA adapter; None for a full model

    @property
    def is_base(self) -> bool:
        return self.storage_key is None


def find_source(session: Session, settings: Settings, project_id: str, model_id: str) -> ModelSource:
    """The model ``model_id`` as seen by ``project_id``; a SourceProblem when it is not one (another
    project's models are reported as unknown, never as someone else's)."""
    tuned = session.get(FineTunedModel, model_id)
    if tuned is not None and tuned.project_id == project_id:
        return _trained(settings, model_id, tuned.id, tuned.storage_key, session.get(Job, tuned.job_id))
    checkpoint = session.scalar(select(Checkpoint).where(
        Checkpoint.project_id == project_id, or_(Checkpoint.model_id == model_id, Checkpoint.id == model_id)))
    if checkpoint is not None:
        return _trained(settings, model_id, checkpoint.model_id, checkpoint.storage_key,
                        session.get(Job, checkpoint.job_id))
    models = list_base_models(settings)
    base = models.get(model_id)
    if base is None:
        offered = ", ".join(sorted(m for m, b in models.items() if b.usable)) or "none"
        raise SourceProblem("model_not_found", f"Unknown model '{model_id}'. Use a base model this deployment "
                            f"offers ({offered}), or one of your fine-tuned models (ft:…) or checkpoints.")
    if not base.usable:
        raise SourceProblem("model_not_supported", f"Base model '{model_id}' cannot be used: {base.problem}.")
    return ModelSource(model_id, base)


def _trained(settings: Settings, asked: str, servable_id: str, storage_key: str, job: Job | None) -> ModelSource:
    root = (job.base_model or job.model) if job is not None else None
    base = list_base_models(settings).get(root) if root else None
    if base is None or not base.usable:
        raise SourceProblem("model_not_supported", f"'{asked}' was trained from base model '{root}', which this "
                            "deployment no longer offers; add its folder back to use it.")
    adapter = (job.hyperparameters or {}).get("adapter")
    return ModelSource(asked, base, model_id=servable_id, task=job.task, storage_key=storage_key, job_id=job.id,
                       plan=dict(job.training_plan or {}),
                       adapter=adapter if adapter and not adapter.get("merge") else None)
