"""OpenAI ``/v1/chat/completions`` and ``/v1/completions`` on fine-tuned causal LMs: the responses and
streamed chunks in OpenAI's shapes, built on the generation helpers every generating task uses."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from typing import Any

from fastapi.concurrency import run_in_threadpool

from app.errors import bad_request
from app.ml.batching import Batchers
from app.ml.generation import Generated, checked_parameters, generate, stream
from app.ml.inference import LoadedModel, in_sorted_batches
from app.ml.chat_templates import TemplateError, TemplateLimitError
from app.ml.tasks.text_generation import render, turn_end_ids
from app.schemas.completions import ChatCompletionRequest, CompletionRequest
from app.services.serving import run_predictions

DEFAULT_CHAT_TOKENS = 256
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


def require_generative(loaded: LoadedModel, model_id: str) -> None:
    if loaded.task != "text-generation":
        raise bad_request(f"Model '{model_id}' is a {loaded.task} model; completions need a text-generation model. "
                          f"Use POST /v1/models/{model_id}/predict instead.", "model", code="model_not_generative")


def chat_prompt(loaded: LoadedModel, body: ChatCompletionRequest) -> str:
    """The request's messages through the model's chat template. The template renders in a helper
    process under the time and output limits (app/ml/chat_templates.py), so this blocks for up to the
    time limit: call it from a worker thread, never on the event loop."""
    if not loaded.tokenizer.chat_template:
        raise bad_request("This model has no chat template; use /v1/completions with a plain prompt.", "model",
                          code="no_chat_template")
    try:
        # Where generation stops, from the template itself (cached per model): a template that cannot
        # render even a stand-in conversation is the model's fault, whatever the messages.
        turn_end_ids(loaded.tokenizer)
    except (TemplateError, ValueError) as exc:
        raise bad_request(f"This model's chat template does not render: {getattr(exc, 'message', exc)} Fine-tune "
                          "it again with a working chat_template.", "model", code="chat_template_error") from None
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        return render(loaded.tokenizer, messages, add_generation_prompt=True)
    except TemplateLimitError as exc:
        raise bad_request(f"Rendering these messages with the model's chat template broke a limit: {exc.message} "
                          "Fewer or shorter messages may fit.", "messages", code="chat_template_limit") from None
    except TemplateError as exc:
        raise bad_request(f"The model's chat template refuses these messages: {exc.message}", "messages",
                          code="chat_template_error") from None


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _parameters(body) -> dict[str, Any]:
    return {**body.parameters(), "seed": body.seed}


def _checked(loaded: LoadedModel, prompts: list[str], parameters: dict[str, Any], chat: bool) -> dict[str, Any]:
    """Every setting checked and the prompts fitted to the model's context, before the request
    waits for the model (in a worker thread: tokenizing a long prompt takes a while). Raises
    FieldProblem naming the field; returns the parameters with the new-token count that fits."""
    if chat:  # the template already holds any special tokens the model expects
        return checked_parameters(loaded, prompts, parameters, DEFAULT_CHAT_TOKENS, "messages",
                                  add_special_tokens=False, prefix="")
    return checked_parameters(loaded, prompts, parameters, DEFAULT_COMPLETION_TOKENS, "prompt", prefix="")


def _generate_batch(loaded: LoadedModel, prompts: list[str], parameters: dict[str, Any], batch_size: int,
                    chat: bool) -> list[Generated]:
    """One micro-batch of prompts (run by the model's batcher, in a worker thread)."""
    def forward(chunk: list[str]) -> list[Generated]:
        if chat:
            return generate(loaded, chunk, parameters, DEFAULT_CHAT_TOKENS, add_special_tokens=False,
                            end_token_ids=turn_end_ids(loaded.tokenizer), param="messages", prefix="")
        return generate(loaded, chunk, parameters, DEFAULT_COMPLETION_TOKENS, param="prompt", prefix="")

    return in_sorted_batches(loaded, prompts, batch_size, forward)


def chat_batch(loaded: LoadedModel, prompts: list[str], parameters: dict[str, Any], batch_size: int):
    return _generate_batch(loaded, prompts, parameters, batch_size, chat=True)


def completion_batch(loaded: LoadedModel, prompts: list[str], parameters: dict[str, Any], batch_size: int):
    return _generate_batch(loaded, prompts, parameters, batch_size, chat=False)


async def _generated(batchers: Batchers, loaded: LoadedModel, body, prompts: list[str], chat: bool) -> list[Generated]:
    """Concurrent requests with the same sampling settings share one left-padded generate() (greedy
    decoding gives each the answer it would get alone). A seeded request runs alone: its sample must
    not depend on who else was waiting. A bad setting or prompt fails this request, never a batch."""
    parameters = await run_in_threadpool(_checked, loaded, prompts, _parameters(body), chat)
    return await run_predictions(batchers, body.model, loaded, prompts, parameters,
                                 run=chat_batch if chat else completion_batch, alone=body.seed is not None)


async def chat(batchers: Batchers, loaded: LoadedModel, body: ChatCompletionRequest) -> dict[str, Any]:
    prompt = await run_in_threadpool(chat_prompt, loaded, body)  # rendering a long conversation takes a while
    result = (await _generated(batchers, loaded, body, [prompt], chat=True))[0]
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": body.model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text, "refusal": None},
                         "logprobs": None, "finish_reason": result.finish_reason}],
            "usage": _usage(result.prompt_tokens, result.completion_tokens)}


async def completion(batchers: Batchers, loaded: LoadedModel, body: CompletionRequest) -> dict[str, Any]:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    results = await _generated(batchers, loaded, body, prompts, chat=False)
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": body.model, "system_fingerprint": None,
            "choices": [{"index": i, "text": (p if body.echo else "") + r.text, "logprobs": None,
                         "finish_reason": r.finish_reason} for i, (p, r) in enumerate(zip(prompts, results))],
            "usage": _usage(sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results))}


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def chat_stream(loaded: LoadedModel, body: ChatCompletionRequest) -> Iterator[str]:
    """SSE lines of ``chat.completion.chunk`` objects, then ``[DONE]``. Call it in a worker thread:
    everything that can fail on the request fails here, before the stream (and its 200) starts. The
    chunks come from a sync generator, iterated off the event loop; closing it stops the generation."""
    prompt = chat_prompt(loaded, body)
    return _chat_chunks(loaded, body, prompt, _checked(loaded, [prompt], _parameters(body), chat=True))


def _chat_chunks(loaded: LoadedModel, body: ChatCompletionRequest, prompt: str,
                 parameters: dict[str, Any]) -> Iterator[str]:
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.model, "system_fingerprint": None}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra) -> str:
        return _sse({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                     **extra})

    yield chunk({"role": "assistant", "content": ""})
    pieces = stream(loaded, prompt, parameters, DEFAULT_CHAT_TOKENS, add_special_tokens=False,
                    end_token_ids=turn_end_ids(loaded.tokenizer), param="messages")
    with closing(pieces):  # closed early (the client went away): the generation stops too
        for piece in pieces:
            if isinstance(piece, Generated):
                usage = _usage(piece.prompt_tokens, piece.completion_tokens)
                yield chunk({}, piece.finish_reason, usage=usage if _wants_usage(body) else None)
            else:
                yield chunk({"content": piece})
    yield _sse("[DONE]")


def completion_stream(loaded: LoadedModel, body: CompletionRequest) -> Iterator[str]:
    """Like ``chat_stream``: call it in a worker thread; the request fails here or not at all."""
    if not isinstance(body.prompt, str):
        raise bad_request("Streaming takes a single prompt string.", "prompt")
    return _completion_chunks(loaded, body, _checked(loaded, [body.prompt], _parameters(body), chat=False))


def _completion_chunks(loaded: LoadedModel, body: CompletionRequest, parameters: dict[str, Any]) -> Iterator[str]:
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": body.model, "system_fingerprint": None}
    if body.echo:
        yield _sse({**head, "choices": [{"index": 0, "text": body.prompt, "logprobs": None, "finish_reason": None}]})
    pieces = stream(loaded, body.prompt, parameters, DEFAULT_COMPLETION_TOKENS, param="prompt")
    with closing(pieces):  # closed early (the client went away): the generation stops too
        for piece in pieces:
            text, finish = ("", piece.finish_reason) if isinstance(piece, Generated) else (piece, None)
            yield _sse({**head, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]})
    yield _sse("[DONE]")


def _wants_usage(body) -> bool:
    options = getattr(body, "stream_options", None) or {}
    return bool(options.get("include_usage"))
