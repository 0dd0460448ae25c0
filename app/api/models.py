from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from app.api.deps import ProjectDep, ReaderProjectDep, ServingProjectDep, SessionDep, SettingsDep, StorageDep
from app.errors import bad_request
from app.ml.artifacts import iter_archive
from app.ml.tasks import get_task
from app.services import models as service
from app.services import serving

router = APIRouter(prefix="/v1/models", tags=["models"])


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # the HF wire format also carries "options"
    inputs: Any
    parameters: dict[str, Any] = {}


@router.get("")
def list_models(session: SessionDep, settings: SettingsDep, project: ReaderProjectDep) -> dict[str, Any]:
    return {"object": "list", "data": service.list_models(session, settings, project)}


# The predict route comes first: model ids contain '/' and ':', so the generic routes would swallow it.
@router.post("/{model_id:path}/predict")
async def predict_route(model_id: str, body: PredictRequest, request: Request, settings: SettingsDep,
                        storage: StorageDep, project: ServingProjectDep) -> Any:
    inputs = body.inputs if isinstance(body.inputs, list) else [body.inputs]
    if not inputs:
        raise bad_request("'inputs' is empty; send a text or a list of texts.", "inputs")
    if len(inputs) > settings.predict_max_inputs:
        raise bad_request(f"At most {settings.predict_max_inputs} inputs per request (got {len(inputs)}).", "inputs")
    loaded = await serving.load(settings, storage, project, request.app.state.model_cache, model_id)
    outputs = await serving.run_predictions(request.app.state.batchers, model_id, loaded, inputs, body.parameters)
    if not isinstance(body.inputs, list) and not get_task(loaded.task).nests_single_output:
        outputs = outputs[0]
    # Plain JSON already: skip FastAPI's response encoding, which costs more than the model on small inputs.
    return JSONResponse(outputs)


@router.get("/{model_id:path}/download", response_class=StreamingResponse, responses={200: {
    "description": "A .tar.gz of the model's files.",
    "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}})
async def download_model(model_id: str, session: SessionDep, settings: SettingsDep, storage: StorageDep,
                         project: ProjectDep) -> StreamingResponse:
    """The model as a .tar.gz: safetensors weights (or the LoRA adapter), config and tokenizer, compressed
    while it is sent."""
    servable = service.require_fine_tuned(session, settings, project, model_id)
    # In a thread: with an object store, the model may have to be downloaded first.
    folder = await run_in_threadpool(storage.local_path, servable.storage_key)
    filename = model_id.replace("/", "_").replace(":", "_") + ".tar.gz"
    return StreamingResponse(iter_archive(folder), media_type="application/gzip",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/{model_id:path}")
def get_model(model_id: str, session: SessionDep, settings: SettingsDep, project: ReaderProjectDep) -> dict[str, Any]:
    return service.get_model(session, settings, project, model_id)


@router.delete("/{model_id:path}")
def delete_model(model_id: str, request: Request, session: SessionDep, settings: SettingsDep, storage: StorageDep,
                 project: ProjectDep) -> dict[str, Any]:
    """Deletes the model and its checkpoints; none of them is served or downloadable afterwards."""
    deleted = service.delete_model(session, settings, project, model_id)
    session.commit()
    serving.unload(request.app.state.model_cache, request.app.state.batchers, [d.id for d in deleted])
    for servable in deleted:
        storage.delete(servable.storage_key)
    return {"id": model_id, "object": "model", "deleted": True}
