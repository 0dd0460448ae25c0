"""Models: the base models on offer and the project's fine-tuned ones (OpenAI's model routes), their
download, and predictions in the Hugging Face Inference API's wire format."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.api.deps import ProjectDep, ReaderProjectDep, ServingProjectDep, SessionDep, SettingsDep, StorageDep
from app.api.presenters import answer, model_object
from app.db.engine import after_commit
from app.errors import bad_request
from app.ml.artifacts import iter_archive
from app.ml.tasks import get_task
from app.schemas.models import DeletedModel, ModelList, ModelObject, PredictRequest
from app.services import models as service
from app.services import reads, serving

router = APIRouter(prefix="/v1/models", tags=["models"])
_PREDICTIONS = {200: {"description": "One output per input, shaped as the Hugging Face Inference API shapes the "
                                     "model's task: `[[{label, score}…]]` for classification, entity groups for "
                                     "token classification, `{answer, score, start, end}` for question answering, "
                                     "`[{generated_text}]` or `[{summary_text}]` for generation.",
                      "content": {"application/json": {"schema": {}}}}}


@router.get("", response_model=ModelList)
def list_models(session: SessionDep, settings: SettingsDep, project: ReaderProjectDep) -> ModelList:
    """The base models this deployment offers (fine-tunable or not, and why), then the project's
    fine-tuned models."""
    return ModelList(data=[model_object(m) for m in service.list_models(session, settings, project)])


# The predict route comes first: model ids contain '/' and ':', so the generic routes would swallow it.
@router.post("/{model_id:path}/predict", response_class=JSONResponse, responses=_PREDICTIONS)
async def predict_route(model_id: str, body: PredictRequest, request: Request, settings: SettingsDep,
                        storage: StorageDep, project: ServingProjectDep) -> Any:
    """Predictions of a fine-tuned model or checkpoint. Concurrent requests to one model are batched."""
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
    while it is sent; never a pickle."""
    servable = service.require_fine_tuned(session, settings, project, model_id)
    # In a thread: with an object store, the model may have to be downloaded first.
    folder = await run_in_threadpool(storage.local_path, servable.storage_key)
    filename = model_id.replace("/", "_").replace(":", "_") + ".tar.gz"
    return StreamingResponse(iter_archive(folder), media_type="application/gzip",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/{model_id:path}", response_model=ModelObject)
async def get_model(model_id: str, settings: SettingsDep, project: ReaderProjectDep) -> Response:
    """A base model on offer, or one of the project's fine-tuned models."""
    return await answer(lambda: model_object(reads.model(settings, project, model_id)))


@router.delete("/{model_id:path}", response_model=DeletedModel)
def delete_model(model_id: str, request: Request, session: SessionDep, settings: SettingsDep, storage: StorageDep,
                 project: ProjectDep) -> DeletedModel:
    """Delete a fine-tuned model and its checkpoints; none of them is served or downloadable afterwards."""
    deleted = service.delete_model(session, settings, project, model_id)

    def unload_and_remove() -> None:  # once the rows are gone for good
        serving.unload(request.app.state.model_cache, request.app.state.batchers, [d.id for d in deleted])
        for servable in deleted:
            storage.delete(servable.storage_key)

    after_commit(session, unload_and_remove)
    return DeletedModel(id=model_id)
