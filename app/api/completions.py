"""OpenAI-compatible text generation on fine-tuned causal LMs, so the OpenAI SDKs work unmodified."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.api.deps import ServingProjectDep, SettingsDep, StorageDep
from app.errors import bad_request
from app.ml.tasks import FieldProblem
from app.schemas.completions import ChatCompletionRequest, CompletionRequest
from app.services import completions, serving

router = APIRouter(prefix="/v1", tags=["completions"])
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, settings: SettingsDep, storage: StorageDep,
                           project: ServingProjectDep) -> Any:
    loaded = await serving.load(settings, storage, project, request.app.state.model_cache, body.model)
    return await _answer(request, loaded, body, completions.chat, completions.chat_stream)


@router.post("/completions")
async def text_completions(body: CompletionRequest, request: Request, settings: SettingsDep, storage: StorageDep,
                           project: ServingProjectDep) -> Any:
    loaded = await serving.load(settings, storage, project, request.app.state.model_cache, body.model)
    return await _answer(request, loaded, body, completions.completion, completions.completion_stream)


async def _answer(request: Request, loaded, body, whole, streamed) -> Any:
    completions.require_generative(loaded, body.model)
    try:
        if body.stream:
            return StreamingResponse(streamed(loaded, body), media_type="text/event-stream", headers=SSE_HEADERS)
        return await whole(request.app.state.batchers, loaded, body)
    except FieldProblem as problem:
        raise bad_request(problem.message, problem.param) from None
