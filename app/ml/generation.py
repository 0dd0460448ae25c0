"""Text generation shared by every generating task and protocol (HF ``parameters``, OpenAI
completions): sampling arguments checked once, prompts checked against the model's context before
they reach it, batched generation, and token streaming.

Every generation runs with two per-step hooks (``StoppingCriteria``, called after each decoding
step): one hands the model's lock to whoever waits for it (see ``LoadedModel.let_others_run``) and
ends the generation when its client has gone; the other ends a row once a stop string appears,
decoding only the row's last few tokens."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app.ml.tasks.base import FieldProblem

MAX_NEW_TOKENS = 4096
MAX_STOPS = 4
MAX_STOP_CHARS = 64
# A stop string is looked for in the decoded text of each row's last (its UTF-8 length + this) tokens:
# every token adds at least one byte of text, and the margin keeps the window's first token (which
# decoders may render differently, e.g. without its leading space) out of the match.
STOP_WINDOW_MARGIN = 8
# Where neither the model's config nor its tokenizer says how long a sequence may be: long enough for
# any model this service trains (max_seq_length is capped at 1024), short enough to be safe.
FALLBACK_CONTEXT = 2048
# The config fields different architectures use for their context length, most common first.
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx",
                  "max_seq_len")
# A streamed generation gives up when no token arrives for this long (the model is stuck).
STREAM_STALL_S = 600


@dataclass
class Decoding:
    """A request's generation settings, checked: what model.generate() gets, and what happens around it."""

    kwargs: dict[str, Any]  # generate() arguments: max_new_tokens, do_sample, temperature…
    stops: list[str]
    keep_last: int | None  # truncate_prompt_tokens / truncate: keep only the prompt's last tokens
    seed: int | None
    explicit_length: bool  # the request named max_tokens; otherwise the default may shrink to fit


def decoding(parameters: dict[str, Any], default_new_tokens: int, prefix: str = "parameters.") -> Decoding:
    """HF / OpenAI generation parameters, each checked and refused naming its field (``prefix``:
    where the protocol keeps them, ``parameters.`` for HF, nothing for OpenAI's top-level fields)."""
    def number(name: str, low: float, high: float, cast=float):
        value = parameters.get(name)
        if value is None:
            return None
        try:
            if isinstance(value, bool) or (cast is int and isinstance(value, float) and not value.is_integer()):
                raise TypeError
            value = cast(value)
        except (TypeError, ValueError):
            raise FieldProblem(f"{prefix}{name}", f"{name} must be a number, not {str(value)[:40]!r}.") from None
        if not low <= value <= high:
            raise FieldProblem(f"{prefix}{name}", f"{name} must be between {low} and {high} (got {value}).")
        return value

    asked = number("max_new_tokens", 1, MAX_NEW_TOKENS, int) or number("max_tokens", 1, MAX_NEW_TOKENS, int)
    temperature = number("temperature", 0.0, 5.0)
    top_p = number("top_p", 0.0, 1.0)
    top_k = number("top_k", 0, 10_000, int)
    repetition = number("repetition_penalty", 0.01, 100.0)
    seed = number("seed", 0, 2**32 - 1, int)
    keep_last = number("truncate_prompt_tokens", 1, 10**7, int) or number("truncate", 1, 10**7, int)
    sample = parameters.get("do_sample")
    if sample is not None and not isinstance(sample, bool):
        raise FieldProblem(f"{prefix}do_sample", "do_sample must be true or false.")
    do_sample = sample if sample is not None else bool(temperature)  # temperature 0 / absent: greedy
    kwargs: dict[str, Any] = {"max_new_tokens": asked or default_new_tokens, "do_sample": do_sample}
    if do_sample:
        kwargs["temperature"] = temperature or 1.0
        if top_p:
            kwargs["top_p"] = top_p
        if top_k is not None:
            kwargs["top_k"] = top_k
    if repetition:
        kwargs["repetition_penalty"] = repetition
    return Decoding(kwargs, _stops(parameters.get("stop"), f"{prefix}stop"), keep_last, seed, asked is not None)


def _stops(stop: Any, param: str) -> list[str]:
    if stop in (None, [], ""):  # HF clients send an empty list for "no stop sequences"
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise FieldProblem(param, "stop must be a string or a list of non-empty strings.")
    if len(stop) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stop):
        raise FieldProblem(param, f"stop takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters "
                                  f"each (got {len(stop)}, the longest {max(map(len, stop))} characters).")
    return stop


def context_window(model, tokenizer) -> int:
    """How many tokens (prompt and new ones) the model can attend to: its config's position limit
    (whatever the architecture calls it; the text part of a multimodal config), else the tokenizer's
    model_max_length when it is a real limit rather than transformers' "unset" sentinel."""
    config = model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else FALLBACK_CONTEXT


@dataclass
class Prompts:
    """Prompts as token ids (truncated as asked), and the new tokens they leave room for."""

    ids: list[list[int]]
    max_new_tokens: int


def fit_prompts(served, prompts: list[str], settings: Decoding, param: str, add_special_tokens: bool = True,
                prefix: str = "parameters.") -> Prompts:
    """Tokenize the prompts and check them against the model's context: a prompt whose tokens and
    the new ones asked for do not fit is refused (naming ``param``); without an explicit max_tokens,
    the default shrinks to what fits. Run in the request path before generating: positions past the
    context are an IndexError on CPU and a device-side assert (which poisons the process) on GPU."""
    tokenizer = served.tokenizer
    limit = context_window(served.model, tokenizer)
    truncate = "truncate_prompt_tokens" if not prefix else f"{prefix}truncate"
    if settings.keep_last is not None and settings.keep_last >= limit:
        raise FieldProblem(truncate, f"{truncate} must be below the model's context of {limit} tokens, to leave "
                                     f"room for new tokens (got {settings.keep_last}).")
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids = []
    for row in encoded:
        row = row[-settings.keep_last:] if settings.keep_last else row
        if not row:  # as OpenAI does: an empty prompt starts from the beginning-of-text token
            if start is None:
                raise FieldProblem(param, "The prompt is empty; send some text.")
            row = [start]
        ids.append(row)
    longest = max(len(row) for row in ids)
    room = limit - longest
    asked = settings.kwargs["max_new_tokens"]
    if asked > room and (settings.explicit_length or room < 1):
        max_tokens = "max_tokens" if not prefix else f"{prefix}max_new_tokens"
        how = "were asked for" if settings.explicit_length else "are the least this request generates"
        raise FieldProblem(param, f"The prompt has {longest} tokens and {asked} new tokens {how}: "
                                  f"{longest + asked} in all, more than the model's context of {limit} tokens. "
                                  f"Shorten the prompt, lower {max_tokens} (at most {max(room, 0)} here), or set "
                                  f"{truncate} to keep only the prompt's last tokens.")
    return Prompts(ids, min(asked, room))


def checked_parameters(served, prompts: list[str], parameters: dict[str, Any], default_new_tokens: int,
                       param: str, add_special_tokens: bool = True, prefix: str = "parameters.") -> dict[str, Any]:
    """The request's parameters once its prompts are checked against the context (raising
    FieldProblem), with the number of new tokens made explicit: the batch then generates what fits."""
    settings = decoding(parameters, default_new_tokens, prefix)
    fitted = fit_prompts(served, prompts, settings, param, add_special_tokens, prefix)
    return {**parameters, "max_new_tokens": fitted.max_new_tokens}  # read before max_tokens (see decoding)


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


def _criteria(served, settings: Decoding, prompt_width: int, cancelled: threading.Event | None = None):
    from transformers import StoppingCriteriaList

    turns, stop_strings = _hook_classes()
    hooks = [turns(served, cancelled)]
    if settings.stops:
        hooks.append(stop_strings(served.tokenizer, settings.stops, prompt_width))
    return StoppingCriteriaList(hooks)


def _seed(settings: Decoding) -> None:
    if settings.seed is not None:
        from transformers import set_seed

        set_seed(settings.seed)


def generate(served, prompts: list[str], parameters: dict[str, Any], default_new_tokens: int,
             add_special_tokens: bool = True, end_token_ids: list[int] | None = None, param: str = "inputs",
             prefix: str = "parameters.") -> list[Generated]:
    """Batched generation for decoder-only models (``served``: a LoadedModel whose lock is held):
    prompts are padded on the left so that every row's new tokens start at the same position."""
    import torch

    settings = decoding(parameters, default_new_tokens, prefix)
    fitted = fit_prompts(served, prompts, settings, param, add_special_tokens, prefix)  # again: nothing overflows
    kwargs = {**settings.kwargs, "max_new_tokens": fitted.max_new_tokens}
    model, tokenizer = served.model, served.tokenizer
    width = max(len(row) for row in fitted.ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in fitted.ids], device=model.device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in fitted.ids], device=model.device)
    ends = _end_ids(tokenizer, end_token_ids)
    _seed(settings)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs, pad_token_id=pad,
                                eos_token_id=ends, stopping_criteria=_criteria(served, settings, width))
    results = []
    for row, prompt in zip(output, fitted.ids):
        new = row[width:].tolist()
        end = next((i for i, t in enumerate(new) if t in ends), None)
        ended = end is not None
        if ended:
            new = new[:end]
        new = [t for t in new if t != pad]
        text, stopped = _trim_at_stop(tokenizer.decode(new, skip_special_tokens=True), settings.stops)
        reason = "stop" if ended or stopped or len(new) < kwargs["max_new_tokens"] else "length"
        results.append(Generated(text, reason, len(prompt), len(new)))
    return results


def generate_text_to_text(served, encoded: dict[str, Any], parameters: dict[str, Any],
                          default_new_tokens: int) -> list[str]:
    """Generation for encoder-decoder models (``encoded``: the tokenized, truncated sources): the
    same checked parameters and per-step hooks as the decoder-only path, and the decoder's length
    kept within its position limit."""
    import torch

    settings = decoding(parameters, default_new_tokens)
    room = context_window(served.model, served.tokenizer) - 1  # the decoder starts from one start token
    asked = settings.kwargs["max_new_tokens"]
    if asked > room and settings.explicit_length:
        raise FieldProblem("parameters.max_new_tokens", f"max_new_tokens must be at most {room} for this model, "
                                                        f"whose decoder holds {room + 1} positions (got {asked}).")
    model = served.model
    _seed(settings)
    with torch.inference_mode():
        generated = model.generate(**{k: v.to(model.device) for k, v in encoded.items()},
                                   **{**settings.kwargs, "max_new_tokens": min(asked, room)},
                                   stopping_criteria=_criteria(served, settings, prompt_width=1))
    texts = served.tokenizer.batch_decode(generated, skip_special_tokens=True)
    return [_trim_at_stop(text, settings.stops)[0] for text in texts]


def stream(served, prompt: str, parameters: dict[str, Any], default_new_tokens: int,
           add_special_tokens: bool = True, end_token_ids: list[int] | None = None, param: str = "prompt",
           prefix: str = "") -> Iterator[str | Generated]:
    """Yields text pieces as they are generated, then one ``Generated`` with the totals.

    Generation runs in its own thread (:class:`_BackgroundGeneration`), which takes the model's lock
    itself: the caller (iterating as its client reads) never holds it, so a slow or stalled reader
    delays nobody; the pieces wait in the streamer's queue (at most max_new_tokens of them). Closing
    this generator (the client went away) ends the generation at its next step."""
    settings = decoding(parameters, default_new_tokens, prefix)
    fitted = fit_prompts(served, [prompt], settings, param, add_special_tokens, prefix)
    max_new_tokens = fitted.max_new_tokens
    ends = _end_ids(served.tokenizer, end_token_ids)
    generation = _BackgroundGeneration(served, fitted.ids, settings, max_new_tokens, ends)
    sent = ""
    stopped = False
    try:
        for piece in generation.streamer:
            if stopped:
                continue
            candidate, stopped = _trim_at_stop(sent + piece, settings.stops)
            if candidate[len(sent):]:
                yield candidate[len(sent):]
            sent = candidate
    finally:
        generation.cancelled.set()  # no-op once generation ended; otherwise the client is gone: stop generating
    width = len(fitted.ids[0])
    new = generation.result()[0][width:].tolist()
    ended = any(t in ends for t in new)
    reason = "stop" if ended or stopped or len(new) < max_new_tokens else "length"
    yield Generated(sent, reason, width, len(new))


class _BackgroundGeneration:
    """One prompt generated in a thread of its own, its text pieces queued in ``streamer``."""

    def __init__(self, served, ids: list[list[int]], settings: Decoding, max_new_tokens: int, ends: list[int]):
        from transformers import TextIteratorStreamer

        self.served, self.ids, self.settings = served, ids, settings
        self.max_new_tokens, self.ends = max_new_tokens, ends
        self.streamer = TextIteratorStreamer(served.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                             timeout=STREAM_STALL_S)
        self.cancelled = threading.Event()
        self._output, self._error = None, None
        self._thread = threading.Thread(target=self._run, name="generate-stream", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import torch

        served = self.served
        try:
            with served.hold(), torch.inference_mode():
                input_ids = torch.tensor(self.ids, device=served.model.device)
                _seed(self.settings)
                self._output = served.model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    **{**self.settings.kwargs, "max_new_tokens": self.max_new_tokens}, streamer=self.streamer,
                    eos_token_id=self.ends, pad_token_id=served.tokenizer.pad_token_id,
                    stopping_criteria=_criteria(served, self.settings, len(self.ids[0]), self.cancelled))
        except BaseException as exc:  # surfaced to the caller after the stream ends
            self._error = exc
            self.streamer.end()

    def result(self):
        """The generated ids (prompt included), once the generation has ended; or its error, raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._output


@functools.cache
def _hook_classes() -> tuple[type, type]:
    """The per-step hooks, as transformers ``StoppingCriteria``: defined on first use, so that importing
    this module (the API does at start-up) does not import transformers and torch."""
    import torch
    from transformers import StoppingCriteria

    class Turns(StoppingCriteria):
        """After each decoding step: hand the model's lock to waiting requests (fairness between the
        tenants sharing a base model), and end every row once the client has gone."""

        def __init__(self, served, cancelled: threading.Event | None):
            self.served, self.cancelled = served, cancelled

        def __call__(self, input_ids, scores, **kwargs):
            self.served.let_others_run()
            done = self.cancelled is not None and self.cancelled.is_set()
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    class StopStrings(StoppingCriteria):
        """Ends a row once its generated text contains a stop string. transformers' StopStringCriteria
        builds a vocabulary × stop-length table for every new set of stop strings, walking the whole
        vocabulary in Python (seconds, and gigabytes for long strings, inside the model lock); this
        decodes only each row's last few tokens per step. The text is cut at the stop string later
        (``_trim_at_stop``)."""

        def __init__(self, tokenizer, stops: list[str], prompt_width: int):
            self.tokenizer, self.stops, self.prompt_width = tokenizer, stops, prompt_width
            self.window = max(len(s.encode()) for s in stops) + STOP_WINDOW_MARGIN

        def __call__(self, input_ids, scores, **kwargs):
            tails = input_ids[:, self.prompt_width:][:, -self.window:].tolist()
            texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
            found = [any(s in text for s in self.stops) for text in texts]
            return torch.tensor(found, dtype=torch.bool, device=input_ids.device)

    return Turns, StopStrings
