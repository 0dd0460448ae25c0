"""`finetune files upload|list|get|delete`: datasets, and the report of their scan."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from app.client import render
from app.client.command import DEFAULT_URL, JsonOption, KeyOption, UrlOption, client_command, connect
from app.client.http import Api, path_part

files_cli = typer.Typer(no_args_is_help=True, help="Datasets to train on: upload (with its validation report), "
                                                   "list, get, delete.")
INVALID_FILE = 1
LimitOption = Annotated[int, typer.Option(min=1, max=1000, help="At most this many, newest first.")]


def transfer_progress() -> Progress:
    """A byte counter on stderr, gone when done; on a terminal only, so piped output stays clean."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=render.err, transient=True, disable=not render.err.is_terminal)


def upload_file(api: Api, path: Path, purpose: str = "fine-tune") -> dict:
    """Streams the file as multipart (never read whole), counting the bytes as httpx reads them."""
    with transfer_progress() as progress, open(path, "rb") as handle, \
            progress.wrap_file(handle, total=path.stat().st_size, description=f"Uploading {path.name}") as reader:
        return api.post("/v1/files", files={"file": (path.name, reader)}, data={"purpose": purpose})


def show_file(f: dict) -> None:
    render.out.print(render.file_summary(f))
    problems = render.validation_table(f)
    if problems is not None:
        render.out.print(problems)
    if f.get("status") == "error":
        render.error(f"{f['id']} has errors, so no job can use it: fix them and upload it again.")


def show(f: dict, json_out: bool) -> None:
    if json_out:
        render.print_json(f)
    else:
        show_file(f)


@files_cli.command("upload")
@client_command
def upload(path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                                help="CSV, TSV, JSONL or Parquet (recognised by content).")],
           purpose: str = "fine-tune", url: UrlOption = DEFAULT_URL, key: KeyOption = None,
           json_out: JsonOption = False) -> None:
    """Upload a dataset; prints its validation report (line, column, message), rows, columns and the task
    its columns suggest. Exits 1 when the file has errors."""
    with connect(url, key) as api:
        f = upload_file(api, path, purpose)
    show(f, json_out)
    if f.get("status") == "error":
        raise typer.Exit(INVALID_FILE)


@files_cli.command("list")
@client_command
def list_files(limit: LimitOption = 20, purpose: str | None = None, url: UrlOption = DEFAULT_URL,
               key: KeyOption = None, json_out: JsonOption = False) -> None:
    """The project's files, newest first."""
    with connect(url, key) as api:
        files = list(api.pages("/v1/files", limit, purpose=purpose))
    render.emit(files, json_out, render.files_table(files))


@files_cli.command("get")
@client_command
def get(file_id: str, url: UrlOption = DEFAULT_URL, key: KeyOption = None, json_out: JsonOption = False) -> None:
    """A file and its validation report."""
    with connect(url, key) as api:
        f = api.get(f"/v1/files/{path_part(file_id)}")
    show(f, json_out)


@files_cli.command("delete")
@client_command
def delete(file_id: str, url: UrlOption = DEFAULT_URL, key: KeyOption = None, json_out: JsonOption = False) -> None:
    """Delete a file (refused while a job that has not ended uses it)."""
    with connect(url, key) as api:
        answer = api.delete(f"/v1/files/{path_part(file_id)}")
    render.emit(answer, json_out, f"Deleted {file_id}.")
