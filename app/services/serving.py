"""From a model id in a request to a loaded model ready to run: the project's fine-tuned model or
checkpoint, its base model (for adapters), the process-wide cache, all off the event loop."""

from __future__ import annotations

from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Project
from app.errors import ApiError, bad_request
from app.ml.inference import LoadedModel, ModelCache, predict
from app.ml.tasks import FieldProblem
from app.services import models as registry
from app.storage import LocalStorage


async def load(session: Session, settings: Settings, storage: LocalStorage, project: Project, cache: ModelCache,
               model_id: str) -> LoadedModel:
    servable = registry.require_fine_tuned(session, settings, project, model_id)
    try:
        return await run_in_threadpool(cache.get, servable.id, servable.task, storage.local_path(servable.storage_key),
                                       registry.base_model_path(settings, servable))
    except FileNotFoundError as exc:
        raise ApiError(503, f"Model '{model_id}' cannot be loaded here: {exc}. Is FT_BASE_MODELS_DIR the same as "
                            "on the workers?", param="model", code="model_unavailable") from None


async def run_predictions(loaded: LoadedModel, inputs: list[Any], parameters: dict[str, Any],
                          batch_size: int) -> list[Any]:
    try:
        return await run_in_threadpool(predict, loaded, inputs, parameters, batch_size)
    except FieldProblem as problem:
        raise bad_request(problem.message, problem.param) from None
