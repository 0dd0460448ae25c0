"""OpenAI-compatible text generation on fine-tuned causal LMs, so the OpenAI SDKs work unmodified."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.api.deps import ServingProjectDep, SettingsDep, StorageDep
from app.errors import bad_request
from app.ml.tasks import FieldProblem
from app.schemas.completions import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from app.services import completions, serving

router = APIRouter(prefix="/v1", tags=["completions"])
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _answers(model) -> dict:
    return {200: {"model": model, "description": "The answer; with `stream: true`, Server-Sent Events of chunks "
                                                 "ending with `data: [DONE]`.",
                  "content": {"text/event-stream": {}}}}


@router.post("/chat/completions", responses=_answers(ChatCompletion))
async def chat_completions(body: ChatCompletionRequest, request: Request, settings: SettingsDep, storage: StorageDep,
                           project: ServingProjectDep) -> Any:
    """OpenAI chat completion on a fine-tuned text-generation model, rendered with its chat template. The
    prompt must fit the model's context with `max_tokens` (or ask `truncate_prompt_tokens`)."""
    if len(body.messages) > settings.max_messages:
        raise bad_request(f"At most {settings.max_messages} messages per request (got {len(body.messages)}); "
                          "send fewer, e.g. drop or summarise the oldest turns.", "messages")
    loaded = await serving.load(settings, storage, project, request.app.state.model_cache, body.model)
    return await _answer(request, loaded, body, completions.chat, completions.chat_stream)


@router.post("/completions", responses=_answers(Completion))
async def text_completions(body: CompletionRequest, request: Request, settings: SettingsDep, storage: StorageDep,
                           project: ServingProjectDep) -> Any:
    """OpenAI (legacy) completion of one prompt or a list, on a fine-tuned text-generation model."""
    if isinstance(body.prompt, list) and not 1 <= len(body.prompt) <= settings.max_prompts:
        raise bad_request(f"prompt takes a string or a list of 1 to {settings.max_prompts} strings (got "
                          f"{len(body.prompt)}); split the list over several requests.", "prompt")
    loaded = await serving.load(settings, storage, project, request.app.state.model_cache, body.model)
    return await _answer(request, loaded, body, completions.completion, completions.completion_stream)


async def _answer(request: Request, loaded, body, whole, streamed) -> Any:
    completions.require_generative(loaded, body.model)
    try:
        if body.stream:
            # In a worker thread: the checks tokenize the prompt (and chat renders its template).
            chunks = await run_in_threadpool(streamed, loaded, body)
            return StreamingResponse(_closed_when_done(chunks), media_type="text/event-stream", headers=SSE_HEADERS)
        return await whole(request.app.state.batchers, loaded, body)
    except FieldProblem as problem:
        raise bad_request(problem.message, problem.param) from None


async def _closed_when_done(chunks: Iterator[str]) -> AsyncIterator[str]:
    """The chunks, each taken in a worker thread (generation never blocks the event loop), and the
    generator closed however the response ends: when the client goes away Starlette cancels the
    response, and closing the generator stops the generation rather than let it run for nobody."""
    try:
        while (chunk := await run_in_threadpool(next, chunks, None)) is not None:
            yield chunk
    finally:
        chunks.close()
