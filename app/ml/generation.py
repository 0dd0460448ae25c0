"""Text generation shared by every generating task and protocol (HF ``parameters``, OpenAI
completions): sampling arguments checked once, batched generation, and token streaming."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app.ml.tasks.base import FieldProblem


def generation_kwargs(parameters: dict[str, Any], default_new_tokens: int) -> dict[str, Any]:
    """HF / OpenAI sampling parameters → generate() arguments, checked, each naming its field."""
    def number(name: str, low: float, high: float, cast=float):
        value = parameters.get(name)
        if value is None:
            return None
        try:
            value = cast(value)
        except (TypeError, ValueError):
            raise FieldProblem(f"parameters.{name}", f"{name} must be a number.") from None
        if not low <= value <= high:
            raise FieldProblem(f"parameters.{name}", f"{name} must be between {low} and {high} (got {value}).")
        return value

    new_tokens = number("max_new_tokens", 1, 4096, int) or number("max_tokens", 1, 4096, int) or default_new_tokens
    temperature = number("temperature", 0.0, 5.0)
    top_p = number("top_p", 0.0, 1.0)
    sample = parameters.get("do_sample")
    do_sample = bool(sample) if sample is not None else bool(temperature)  # temperature 0 / absent: greedy
    kwargs: dict[str, Any] = {"max_new_tokens": new_tokens, "do_sample": do_sample}
    stop = parameters.get("stop")
    if stop not in (None, [], ""):  # HF clients send an empty list for "no stop sequences"
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
            raise FieldProblem("stop", "stop must be a string or a list of up to 4 non-empty strings.")
        kwargs["stop_strings"] = stop
    if do_sample:
        kwargs["temperature"] = temperature or 1.0
        if top_p:
            kwargs["top_p"] = top_p
        top_k = number("top_k", 0, 10_000, int)
        if top_k is not None:
            kwargs["top_k"] = top_k
    repetition = number("repetition_penalty", 0.01, 100.0)
    if repetition:
        kwargs["repetition_penalty"] = repetition
    return kwargs


@dataclass
class Generated:
    text: str
    finish_reason: str  # "stop" (end of text or a stop string) or "length" (max tokens reached)
    prompt_tokens: int
    completion_tokens: int


def _trim_at_stop(text: str, stops: list[str] | None) -> tuple[str, bool]:
    cut = min((text.index(s) for s in stops or [] if s in text), default=None)
    return (text, False) if cut is None else (text[:cut], True)


def _end_ids(tokenizer, extra: list[int] | None) -> list[int]:
    return [t for t in [tokenizer.eos_token_id, *(extra or [])] if t is not None]


def generate(model, tokenizer, prompts: list[str], parameters: dict[str, Any], default_new_tokens: int,
             add_special_tokens: bool = True, end_token_ids: list[int] | None = None) -> list[Generated]:
    """Batched generation for decoder-only models: prompts are padded on the left so that every
    row's new tokens start at the same position."""
    import torch

    kwargs = generation_kwargs(parameters, default_new_tokens)
    stops = kwargs.pop("stop_strings", None)
    ends = _end_ids(tokenizer, end_token_ids)
    encoded = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt",
                        add_special_tokens=add_special_tokens)
    encoded = {k: v.to(model.device) for k, v in encoded.items()}
    with torch.inference_mode():
        output = model.generate(**encoded, **kwargs, pad_token_id=tokenizer.pad_token_id, eos_token_id=ends,
                                stop_strings=stops, tokenizer=tokenizer if stops else None)
    width = encoded["input_ids"].shape[1]
    results = []
    for row, mask in zip(output, encoded["attention_mask"]):
        new = row[width:].tolist()
        end = next((i for i, t in enumerate(new) if t in ends), None)
        ended = end is not None
        if ended:
            new = new[:end]
        new = [t for t in new if t != tokenizer.pad_token_id]
        text, stopped = _trim_at_stop(tokenizer.decode(new, skip_special_tokens=True), stops)
        reason = "stop" if ended or stopped or len(new) < kwargs["max_new_tokens"] else "length"
        results.append(Generated(text, reason, int(mask.sum()), len(new)))
    return results


def stream(model, tokenizer, prompt: str, parameters: dict[str, Any], default_new_tokens: int,
           add_special_tokens: bool = True, end_token_ids: list[int] | None = None) -> Iterator[str | Generated]:
    """Yields text pieces as they are generated, then one ``Generated`` with the totals. Generation
    runs in its own thread; the caller iterates (off the event loop)."""
    from transformers import TextIteratorStreamer

    kwargs = generation_kwargs(parameters, default_new_tokens)
    stops = kwargs.pop("stop_strings", None)
    ends = _end_ids(tokenizer, end_token_ids)
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens)
    encoded = {k: v.to(model.device) for k, v in encoded.items()}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    outcome: dict[str, Any] = {}

    def run():
        import torch

        try:
            with torch.inference_mode():
                outcome["output"] = model.generate(**encoded, **kwargs, streamer=streamer, eos_token_id=ends,
                                                   pad_token_id=tokenizer.pad_token_id, stop_strings=stops,
                                                   tokenizer=tokenizer if stops else None)
        except BaseException as exc:  # surfaced to the caller after the stream ends
            outcome["error"] = exc
            streamer.end()

    thread = threading.Thread(target=run, name="generate-stream", daemon=True)
    thread.start()
    sent = ""
    stopped = False
    for piece in streamer:
        if stopped:
            continue
        candidate, stopped = _trim_at_stop(sent + piece, stops)
        if candidate[len(sent):]:
            yield candidate[len(sent):]
        sent = candidate
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    new = outcome["output"][0][encoded["input_ids"].shape[1]:].tolist()
    ended = any(t in ends for t in new)
    reason = "stop" if ended or stopped or len(new) < kwargs["max_new_tokens"] else "length"
    yield Generated(sent, reason, int(encoded["input_ids"].shape[1]), len(new))
