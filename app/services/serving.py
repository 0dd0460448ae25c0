"""From a model id in a request to a loaded model ready to run: the project's fine-tuned model or
checkpoint, its base model (for adapters), the process-wide cache, all off the event loop."""

from __future__ import annotations

from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Project
from app.errors import ApiError, bad_request
from app.ml.batching import Batchers
from app.ml.inference import LoadedModel, ModelCache
from app.ml.tasks import FieldProblem
from app.services import models as registry
from app.storage import LocalStorage


async def load(session: Session, settings: Settings, storage: LocalStorage, project: Project, cache: ModelCache,
               model_id: str) -> LoadedModel:
    def locate():  # database and filesystem lookups stay off the event loop
        servable = registry.require_fine_tuned(session, settings, project, model_id)
        return servable, registry.base_model_path(settings, servable)

    servable, base_path = await run_in_threadpool(locate)
    try:
        return await run_in_threadpool(cache.get, servable.id, servable.task, storage.local_path(servable.storage_key),
                                       base_path)
    except FileNotFoundError as exc:
        raise ApiError(503, f"Model '{model_id}' cannot be loaded here: {exc}. Is FT_BASE_MODELS_DIR the same as "
                            "on the workers?", param="model", code="model_unavailable") from None


async def run_predictions(batchers: Batchers, model_id: str, loaded: LoadedModel, inputs: list[Any],
                          parameters: dict[str, Any]) -> list[Any]:
    """Through the model's micro-batcher: coalesced with concurrent requests to the same model."""
    try:
        return await batchers(model_id).submit(loaded, inputs, parameters)
    except FieldProblem as problem:
        raise bad_request(problem.message, problem.param) from None
