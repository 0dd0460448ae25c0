"""OpenAI ``/v1/chat/completions`` and ``/v1/completions`` on fine-tuned causal LMs: the responses and
streamed chunks in OpenAI's shapes, built on the generation helpers every generating task uses."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from app.errors import bad_request
from app.ml.batching import Batchers
from app.ml.generation import Generated, generate, generation_kwargs, stream
from app.ml.inference import LoadedModel, in_sorted_batches
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
    if not loaded.tokenizer.chat_template:
        raise bad_request("This model has no chat template; use /v1/completions with a plain prompt.", "model",
                          code="no_chat_template")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    return render(loaded.tokenizer, messages, add_generation_prompt=True)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _seeded(seed: int | None) -> None:
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)


def _generate_batch(loaded: LoadedModel, prompts: list[str], parameters: dict[str, Any], batch_size: int,
                    chat: bool) -> list[Generated]:
    """One micro-batch of prompts (run by the model's batcher, in a worker thread)."""
    def forward(chunk: list[str]) -> list[Generated]:
        _seeded(parameters.get("seed"))
        if chat:  # the template already holds any special tokens the model expects
            return generate(loaded.model, loaded.tokenizer, chunk, parameters, DEFAULT_CHAT_TOKENS,
                            add_special_tokens=False, end_token_ids=turn_end_ids(loaded.tokenizer))
        return generate(loaded.model, loaded.tokenizer, chunk, parameters, DEFAULT_COMPLETION_TOKENS)

    return in_sorted_batches(loaded, prompts, batch_size, forward)


def chat_batch(loaded: LoadedModel, prompts: list[str], parameters: dict[str, Any], batch_size: int):
    return _generate_batch(loaded, prompts, parameters, batch_size, chat=True)


def completion_batch(loaded: LoadedModel, prompts: list[str], parameters: dict[str, Any], batch_size: int):
    return _generate_batch(loaded, prompts, parameters, batch_size, chat=False)


async def _generated(batchers: Batchers, loaded: LoadedModel, body, prompts: list[str], run) -> list[Generated]:
    """Concurrent requests with the same sampling settings share one left-padded generate() (greedy
    decoding gives each the answer it would get alone). A seeded request runs alone: its sample must
    not depend on who else was waiting."""
    generation_kwargs(body.parameters(), 1)  # a bad setting fails this request, never a batch
    return await run_predictions(batchers, body.model, loaded, prompts, {**body.parameters(), "seed": body.seed},
                                 run=run, alone=body.seed is not None)


async def chat(batchers: Batchers, loaded: LoadedModel, body: ChatCompletionRequest) -> dict[str, Any]:
    result = (await _generated(batchers, loaded, body, [chat_prompt(loaded, body)], chat_batch))[0]
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": body.model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text, "refusal": None},
                         "logprobs": None, "finish_reason": result.finish_reason}],
            "usage": _usage(result.prompt_tokens, result.completion_tokens)}


async def completion(batchers: Batchers, loaded: LoadedModel, body: CompletionRequest) -> dict[str, Any]:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    results = await _generated(batchers, loaded, body, prompts, completion_batch)
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": body.model, "system_fingerprint": None,
            "choices": [{"index": i, "text": (p if body.echo else "") + r.text, "logprobs": None,
                         "finish_reason": r.finish_reason} for i, (p, r) in enumerate(zip(prompts, results))],
            "usage": _usage(sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results))}


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _checked_for_streaming(body) -> None:
    """Everything that can fail on the request fails before the stream (and its 200) starts."""
    generation_kwargs(body.parameters(), 1)


def chat_stream(loaded: LoadedModel, body: ChatCompletionRequest) -> Iterator[str]:
    """SSE lines of ``chat.completion.chunk`` objects, then ``[DONE]``. The chunks come from a sync
    generator: Starlette iterates it in a worker thread, so generation never blocks the event loop."""
    prompt = chat_prompt(loaded, body)
    _checked_for_streaming(body)
    return _chat_chunks(loaded, body, prompt)


def _chat_chunks(loaded: LoadedModel, body: ChatCompletionRequest, prompt: str) -> Iterator[str]:
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.model, "system_fingerprint": None}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra) -> str:
        return _sse({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                     **extra})

    with loaded.lock:
        loaded.activate()
        _seeded(body.seed)
        yield chunk({"role": "assistant", "content": ""})
        for piece in stream(loaded.model, loaded.tokenizer, prompt, body.parameters(), DEFAULT_CHAT_TOKENS,
                            add_special_tokens=False, end_token_ids=turn_end_ids(loaded.tokenizer)):
            if isinstance(piece, Generated):
                usage = _usage(piece.prompt_tokens, piece.completion_tokens)
                yield chunk({}, piece.finish_reason, usage=usage if _wants_usage(body) else None)
            else:
                yield chunk({"content": piece})
    yield _sse("[DONE]")


def completion_stream(loaded: LoadedModel, body: CompletionRequest) -> Iterator[str]:
    if not isinstance(body.prompt, str):
        raise bad_request("Streaming takes a single prompt string.", "prompt")
    _checked_for_streaming(body)
    return _completion_chunks(loaded, body)


def _completion_chunks(loaded: LoadedModel, body: CompletionRequest) -> Iterator[str]:
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": body.model, "system_fingerprint": None}
    with loaded.lock:
        loaded.activate()
        _seeded(body.seed)
        if body.echo:
            yield _sse({**head, "choices": [{"index": 0, "text": body.prompt, "logprobs": None,
                                             "finish_reason": None}]})
        for piece in stream(loaded.model, loaded.tokenizer, body.prompt, body.parameters(),
                            DEFAULT_COMPLETION_TOKENS):
            text, finish = ("", piece.finish_reason) if isinstance(piece, Generated) else (piece, None)
            yield _sse({**head, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]})
    yield _sse("[DONE]")


def _wants_usage(body) -> bool:
    options = getattr(body, "stream_options", None) or {}
    return bool(options.get("include_usage"))
