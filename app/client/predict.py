"""`finetune predict` (one text, a few, or a JSONL file sent in batches) and `finetune chat` (an
interactive conversation with a fine-tuned text-generation model, its answers streamed)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.text import Text

from app.client import render
from app.client.command import (DEFAULT_URL, JsonOption, KeyOption, ParamsOption, UrlOption, client_command, connect,
                                parse_params)
from app.client.http import Api, ApiError, path_part

# The service takes up to FT_PREDICT_MAX_INPUTS (1,024) inputs and FT_MAX_BODY_BYTES (4 MiB) per request:
# a batch stays under both, so a long file never makes one request too large.
MAX_BATCH = 1024
MAX_BATCH_BYTES = 1024 * 1024
EXIT_WORDS = {"/exit", "/quit"}


def batches(lines: Iterator[str], size: int) -> Iterator[list[Any]]:
    """JSON inputs of a JSONL stream (blank lines skipped), in lists of at most ``size`` inputs and about
    MAX_BATCH_BYTES, read as they are sent: the file is never held whole."""
    batch: list[Any] = []
    weight = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            batch.append(json.loads(line))
        except ValueError as exc:
            raise typer.BadParameter(f"line {number} is not JSON ({exc}); each line is one input: a JSON string, "
                                     "or an object such as {\"text\", \"text_pair\"} or {\"question\", \"context\"}.",
                                     param_hint="--file") from None
        weight += len(line)
        if len(batch) >= size or weight >= MAX_BATCH_BYTES:
            yield batch
            batch, weight = [], 0
    if batch:
        yield batch


def _is_label_scores(answer: Any) -> bool:
    return isinstance(answer, list) and bool(answer) and all(isinstance(a, dict) and {"label", "score"} <= set(a)
                                                             for a in answer)


def show_answer(text: Any, answer: Any) -> None:
    """Labels and scores as a table; any other task's answer as JSON."""
    if isinstance(answer, list) and len(answer) == 1 and _is_label_scores(answer[0]):
        answer = answer[0]  # one input's labels, nested as the Hugging Face API nests them
    render.out.print(Text(str(text), style="bold"))
    if _is_label_scores(answer):
        render.out.print(render.table(("label", "score"), ((a["label"], f"{a['score']:.4f}") for a in answer)))
    else:
        render.out.print_json(data=answer)


@client_command
def predict(
    model: Annotated[str, typer.Argument(help="A fine-tuned model or checkpoint id (ft:…).")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to predict on.", show_default=False)] = None,
    file: Annotated[typer.FileText | None, typer.Option(
        "--file", "-f", help="JSONL, one input per line (a JSON string, or {\"text\", \"text_pair\"}, "
                             "{\"question\", \"context\"}); '-' reads stdin. Prints one JSON answer per line.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=MAX_BATCH, help="--file: inputs per request.")] = 32,
    params: ParamsOption = None,
    url: UrlOption = DEFAULT_URL, key: KeyOption = None, json_out: JsonOption = False,
) -> None:
    """Predictions of a fine-tuned model: `finetune predict MODEL "text…"`, or `--file inputs.jsonl`.
    -p sets parameters: `-p top_k=1`, `-p max_new_tokens=32`."""
    if bool(texts) == bool(file):
        raise typer.BadParameter("Give either texts or --file.", param_hint="TEXTS / --file")
    parameters = parse_params(params)
    path = f"/v1/models/{path_part(model, slashes=True)}/predict"
    with connect(url, key) as api:
        if file:
            for batch in batches(iter(file), batch_size):
                answers = api.post(path, json={"inputs": batch, "parameters": parameters})
                for answer in answers:
                    render.print_json(answer, compact=True)
            return
        inputs: Any = texts[0] if len(texts) == 1 else texts
        answer = api.post(path, json={"inputs": inputs, "parameters": parameters})
    if json_out:
        render.print_json(answer)
    elif len(texts) == 1:
        show_answer(texts[0], answer)
    else:
        for text, one in zip(texts, answer):
            show_answer(text, one)


def stream_reply(api: Api, body: dict, json_out: bool) -> str:
    """Prints the answer as its tokens come; returns it whole."""
    pieces: list[str] = []
    # Usage in the last chunk: --json shows what each turn cost, the whole conversation counted.
    request = {**body, "stream": True, "stream_options": {"include_usage": True}}
    for sse in api.events("POST", "/v1/chat/completions", json=request):
        if sse.data == "[DONE]":
            break
        chunk = json.loads(sse.data)
        if json_out:
            render.print_json(chunk, compact=True)
        for choice in chunk.get("choices", []):
            piece = (choice.get("delta") or {}).get("content") or ""
            pieces.append(piece)
            if not json_out:
                sys.stdout.write(piece)
                sys.stdout.flush()
    if not json_out:
        sys.stdout.write("\n")
    return "".join(pieces)


@client_command
def chat(
    model: Annotated[str, typer.Argument(help="A fine-tuned text-generation model or checkpoint (ft:…).")],
    system: Annotated[str | None, typer.Option(help="A system message to start the conversation with.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, max=4096, help="Longest answer, in tokens.")] = None,
    temperature: Annotated[float | None, typer.Option(min=0, max=2, help="0 or absent: greedy.")] = None,
    url: UrlOption = DEFAULT_URL, key: KeyOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print each streamed chunk's raw JSON.")] = False,
) -> None:
    """Chat with a fine-tuned model: answers stream as they are generated and the conversation is kept.
    `/reset` starts over; `/exit` or Ctrl-D ends."""
    opening = [{"role": "system", "content": system}] if system else []
    messages = list(opening)
    settings = {name: value for name, value in (("max_tokens", max_tokens), ("temperature", temperature))
                if value is not None}
    interactive = sys.stdin.isatty()
    with connect(url, key) as api:
        while True:
            try:
                text = input("you> " if interactive else "")
            except (EOFError, KeyboardInterrupt):
                break
            if text.strip() in EXIT_WORDS:
                break
            if text.strip() == "/reset":
                messages = list(opening)
                continue
            if not text.strip():
                continue
            messages.append({"role": "user", "content": text})
            try:
                reply = stream_reply(api, {"model": model, "messages": messages, **settings}, json_out)
            except ApiError as exc:
                if exc.status in (401, 403, 404) or exc.param == "model":
                    raise  # no turn can succeed
                render.error(str(exc))  # this turn only is refused (too long, a bad setting): the chat goes on
                messages.pop()
                continue
            except KeyboardInterrupt:  # stops this answer only
                render.err.print("(answer interrupted)")
                messages.pop()
                continue
            messages.append({"role": "assistant", "content": reply})
