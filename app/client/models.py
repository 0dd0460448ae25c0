"""`finetune models list|get|delete|download`: base models on offer and the project's fine-tuned ones."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from app.client import render
from app.client.command import DEFAULT_URL, JsonOption, KeyOption, UrlOption, client_command, connect
from app.client.files import transfer_progress
from app.client.http import path_part

models_cli = typer.Typer(no_args_is_help=True, help="Models: list, get, delete, download (a fine-tuned model "
                                                    "or checkpoint as .tar.gz).")
ModelId = Annotated[str, typer.Argument(help="A model id: a base model (tiny/bert) or a fine-tuned one (ft:…).")]


def _path(model_id: str) -> str:
    return f"/v1/models/{path_part(model_id, slashes=True)}"


@models_cli.command("list")
@client_command
def list_models(url: UrlOption = DEFAULT_URL, key: KeyOption = None, json_out: JsonOption = False) -> None:
    """Base models on offer, then the project's fine-tuned models."""
    with connect(url, key) as api:
        models = api.get("/v1/models")
    render.emit(models, json_out, render.models_table(models["data"]))


@models_cli.command("get")
@client_command
def get(model_id: ModelId, url: UrlOption = DEFAULT_URL, key: KeyOption = None, json_out: JsonOption = False) -> None:
    """One model."""
    with connect(url, key) as api:
        model = api.get(_path(model_id))
    render.emit(model, json_out, render.model_details(model))


@models_cli.command("delete")
@client_command
def delete(model_id: ModelId, url: UrlOption = DEFAULT_URL, key: KeyOption = None,
           json_out: JsonOption = False) -> None:
    """Delete a fine-tuned model and its job's checkpoints."""
    with connect(url, key) as api:
        answer = api.delete(_path(model_id))
    render.emit(answer, json_out, f"Deleted {model_id}.")


def archive_name(model_id: str) -> str:
    """The name the service gives the archive (Content-Disposition), where none is asked for."""
    return model_id.replace("/", "_").replace(":", "_") + ".tar.gz"


@models_cli.command("download")
@client_command
def download(model_id: ModelId,
             output: Annotated[Path | None, typer.Option("--output", "-o", dir_okay=True, help="File to write, or a "
                                                         "folder for it; default: <model id>.tar.gz here.")] = None,
             url: UrlOption = DEFAULT_URL, key: KeyOption = None, json_out: JsonOption = False) -> None:
    """A fine-tuned model or checkpoint as .tar.gz (safetensors weights or the LoRA adapter, config,
    tokenizer; never a pickle), streamed to a file. The file appears only once it is whole."""
    target = output or Path(archive_name(model_id))
    if target.is_dir():
        target = target / archive_name(model_id)
    partial = target.with_name(target.name + ".part")
    written = 0
    with connect(url, key) as api, api.stream("GET", f"{_path(model_id)}/download") as response, \
            transfer_progress() as progress:
        # Compressed while it is sent: the size is unknown, so the bar counts bytes without a total.
        task = progress.add_task(f"Downloading {model_id}", total=None)
        try:
            with open(partial, "wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
                    written += len(chunk)
                    progress.update(task, advance=len(chunk))
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    if json_out:
        render.print_json({"id": model_id, "path": str(target), "bytes": written})
    else:
        render.out.print(f"Saved {model_id} to {target} ({render.size(written)}).")
