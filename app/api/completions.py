"""OpenAI-compatible text generation on fine-tuned causal LMs, so the OpenAI SDKs work unmodified."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.api.deps import ProjectDep, SessionDep, SettingsDep, StorageDep
from app.ml.tasks import FieldProblem
from app.errors import bad_request
from app.schemas.completions import ChatCompletionRequest, CompletionRequest
from app.services import completions, serving

router = APIRouter(prefix="/v1", tags=["completions"])
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, session: SessionDep, settings: SettingsDep,
                           storage: StorageDep, project: ProjectDep) -> Any:
    loaded = await serving.load(session, settings, storage, project, request.app.state.model_cache, body.model)
    completions.require_generative(loaded, body.model)
    try:
        if body.stream:
            # Everything that can fail on the request (template, parameters) fails before streaming starts.
            prompt = completions.chat_prompt(loaded, body)
            _check_parameters(body)
            return StreamingResponse(completions.chat_stream(loaded, body, prompt), media_type="text/event-stream",
                                     headers=SSE_HEADERS)
        return await run_in_threadpool(completions.chat, loaded, body)
    except FieldProblem as problem:
        raise bad_request(problem.message, problem.param) from None


@router.post("/completions")
async def text_completions(body: CompletionRequest, request: Request, session: SessionDep, settings: SettingsDep,
                           storage: StorageDep, project: ProjectDep) -> Any:
    loaded = await serving.load(session, settings, storage, project, request.app.state.model_cache, body.model)
    completions.require_generative(loaded, body.model)
    try:
        if body.stream:
            _check_parameters(body)
            if not isinstance(body.prompt, str):
                raise bad_request("Streaming takes a single prompt string.", "prompt")
            return StreamingResponse(completions.completion_stream(loaded, body), media_type="text/event-stream",
                                     headers=SSE_HEADERS)
        return await run_in_threadpool(completions.completion, loaded, body)
    except FieldProblem as problem:
        raise bad_request(problem.message, problem.param) from None


def _check_parameters(body) -> None:
    from app.ml.generation import generation_kwargs

    generation_kwargs(body.parameters(), 1)
