"""From a model id in a request to a loaded model ready to run: the project's fine-tuned model or
checkpoint, its base model (for adapters), the process-wide cache, all off the event loop."""

from __future__ import annotations

import logging
import threading
from typing import Any

from cachetools import TTLCache
from fastapi.concurrency import run_in_threadpool

from app.config import Settings
from app.db.engine import session_scope
from app.errors import ApiError, bad_request
from app.ml.batching import Batchers
from app.ml.inference import LoadedModel, ModelCache
from app.ml.tasks import FieldProblem
from app.services import models as registry
from app.services.keys import ProjectRef
from app.storage import Storage


log = logging.getLogger(__name__)

# Where each served model lives, per project, remembered briefly: the prediction path would otherwise
# query the database on every request. Deleting a model forgets it here at once (in this process).
LOCATION_TTL_S = 10.0
_locations: TTLCache = TTLCache(maxsize=10_000, ttl=LOCATION_TTL_S)
_locations_lock = threading.Lock()


def _locate(settings: Settings, project: ProjectRef, model_id: str):
    with session_scope() as session:
        servable = registry.require_fine_tuned(session, settings, project, model_id)
    found = servable, registry.base_model_path(settings, servable)
    with _locations_lock:
        _locations[(project.id, model_id)] = found
    return found


def forget(model_id: str) -> None:
    with _locations_lock:
        for key in [k for k in _locations if k[1] == model_id]:
            _locations.pop(key, None)


def unload(cache: ModelCache, batchers: Batchers, model_ids: list[str]) -> None:
    """Deleted models stop being served by this process at once (other replicas: within LOCATION_TTL_S)."""
    for model_id in model_ids:
        cache.drop(model_id)
        batchers.drop(model_id)
        forget(model_id)


async def load(settings: Settings, storage: Storage, project: ProjectRef, cache: ModelCache,
               model_id: str) -> LoadedModel:
    with _locations_lock:
        found = _locations.get((project.id, model_id))
    servable, base_path = found or await run_in_threadpool(_locate, settings, project, model_id)
    loaded = cache.peek(servable.id)
    if loaded is not None:  # the common case: no thread hop for a loaded model
        return loaded
    try:
        # In a thread: loading (and with an object store, downloading) takes seconds.
        return await run_in_threadpool(lambda: cache.get(servable.id, servable.task,
                                                         storage.local_path(servable.storage_key), base_path))
    except FileNotFoundError:
        # Why goes to the log: the reason names this machine's folders, which are not the caller's business.
        log.exception("model %s cannot be loaded", model_id)
        raise ApiError(503, f"Model '{model_id}' cannot be loaded on this server right now (its files or its base "
                            "model are missing here); the operator's log says why.", param="model",
                       code="model_unavailable") from None


async def run_predictions(batchers: Batchers, model_id: str, loaded: LoadedModel, inputs: list[Any],
                          parameters: dict[str, Any], **how) -> list[Any]:
    """Through the model's micro-batcher: coalesced with concurrent requests to the same model. ``how``:
    the batcher's ``run`` (default: the task's predict) and ``alone``."""
    try:
        return await batchers(model_id).submit(loaded, inputs, parameters, **how)
    except FieldProblem as problem:
        raise bad_request(problem.message, problem.param) from None
