"""`finetune jobs create|list|get|cancel|pause|resume|follow`: fine-tuning jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from app.client import render
from app.client.command import (DEFAULT_URL, JsonOption, KeyOption, ParamsOption, UrlOption, client_command, connect,
                                parse_params)
from app.client.files import INVALID_FILE, LimitOption, show_file, upload_file
from app.client.follow import follow_job
from app.client.http import Api, path_part

jobs_cli = typer.Typer(no_args_is_help=True, help="Fine-tuning jobs: create, list, get, follow live, cancel, "
                                                  "pause, resume.")
JobId = Annotated[str, typer.Argument(help="The job's id (ftjob-…).")]
ReconnectOption = Annotated[float, typer.Option(
    "--reconnect-for", min=0, help="How long to keep trying to reconnect a dropped stream, in seconds.")]


def dataset_id(api: Api, value: str, role: str) -> str:
    """A file id as it is, or a local file uploaded first (its report shown, and an exit if it has errors)."""
    path = Path(value)
    if path.is_file():
        uploaded = upload_file(api, path)
        render.err.print(f"Uploaded {path} as {uploaded['id']} ({uploaded.get('rows')} rows, "
                         f"{uploaded.get('detected_task') or 'no task detected'}).")
        if uploaded.get("status") == "error":
            show_file(uploaded)
            raise typer.Exit(INVALID_FILE)
        return uploaded["id"]
    if value.startswith("file-"):
        return value
    raise typer.BadParameter(f"'{value}' is neither a file id (file-…) nor a file here.", param_hint=role)


def job_body(model: str, training_file: str, validation_file: str | None, epochs: int | None, lora: bool,
             params: dict[str, Any], method: str, suffix: str | None, seed: int | None, task: str | None,
             chat_template: str | None) -> dict[str, Any]:
    """The create body: hyperparameters under OpenAI's ``method``; ``adapter`` at the top level, where
    ``-p adapter={…}`` adds its settings (r, alpha, target_modules, merge…) to --lora."""
    hyperparameters = dict(params)
    adapter = hyperparameters.pop("adapter", None)
    if epochs is not None:
        hyperparameters["n_epochs"] = epochs
    body: dict[str, Any] = {"model": model, "training_file": training_file,
                            "method": {"type": method, method: {"hyperparameters": hyperparameters}}}
    if lora or adapter is not None:
        body["adapter"] = {"type": "lora", **(adapter if isinstance(adapter, dict) else {})}
    optional = {"validation_file": validation_file, "suffix": suffix, "seed": seed, "task": task,
                "chat_template": chat_template}
    body.update({name: value for name, value in optional.items() if value is not None})
    return body


def show_job(job: dict, json_out: bool) -> None:
    render.emit(job, json_out, render.job_details(job))


@jobs_cli.command("create")
@client_command
def create(
    model: Annotated[str, typer.Option("--model", "-m", help="A base model (`finetune models list`), or a "
                                                             "fine-tuned model or checkpoint to train on from.")],
    training_file: Annotated[str, typer.Option("--file", "-f", help="A file id (file-…) or a local file, "
                                                                    "uploaded first.")],
    validation_file: Annotated[str | None, typer.Option("--validation-file", "-v", help="Likewise; default: the "
                                                        "service holds 5% of a large training file out.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, max=100, help="n_epochs (default: the service's).")] = None,
    lora: Annotated[bool, typer.Option("--lora", help="Train a LoRA adapter instead of every weight; "
                                                      "-p adapter='{\"r\": 8}' sets its options.")] = False,
    params: ParamsOption = None,
    method: Annotated[str, typer.Option(help="supervised, or dpo for preference pairs.")] = "supervised",
    suffix: Annotated[str | None, typer.Option(help="Goes into the model id.")] = None,
    seed: int | None = None,
    task: Annotated[str | None, typer.Option(help="Default: detected from the training file.")] = None,
    chat_template: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="A Jinja chat template "
                                                       "file, for a text-generation base model without one.")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Then follow it live (exit code as `jobs follow`).")] = False,
    url: UrlOption = DEFAULT_URL, key: KeyOption = None, json_out: JsonOption = False,
) -> None:
    """Create a fine-tuning job. -p sets hyperparameters: `-p learning_rate=2e-5 -p batch_size=16`."""
    hyperparameters = parse_params(params)
    with connect(url, key) as api:
        train = dataset_id(api, training_file, "--file")
        valid = dataset_id(api, validation_file, "--validation-file") if validation_file else None
        body = job_body(model, train, valid, epochs, lora, hyperparameters, method, suffix, seed, task,
                        chat_template.read_text() if chat_template else None)
        job = api.post("/v1/fine_tuning/jobs", json=body)
        if json_out and follow:
            render.print_json(job, compact=True)  # then the events: JSON Lines throughout
        else:
            show_job(job, json_out)
        if follow:
            raise typer.Exit(follow_job(api, job["id"], json_out))


@jobs_cli.command("list")
@client_command
def list_jobs(limit: LimitOption = 20,
              status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
              url: UrlOption = DEFAULT_URL, key: KeyOption = None, json_out: JsonOption = False) -> None:
    """The project's jobs, newest first."""
    with connect(url, key) as api:
        jobs = list(api.pages("/v1/fine_tuning/jobs", limit, status=status))
    render.emit(jobs, json_out, render.jobs_table(jobs))


@jobs_cli.command("get")
@client_command
def get(job_id: JobId, url: UrlOption = DEFAULT_URL, key: KeyOption = None, json_out: JsonOption = False) -> None:
    """A job: status, progress, metrics, before → after evaluation, error."""
    with connect(url, key) as api:
        show_job(api.get(f"/v1/fine_tuning/jobs/{path_part(job_id)}"), json_out)


def _action(job_id: str, action: str, url: str, key: str | None, json_out: bool) -> None:
    with connect(url, key) as api:
        job = api.post(f"/v1/fine_tuning/jobs/{path_part(job_id)}/{action}")
    if json_out:
        render.print_json(job)
        return
    render.out.print(f"{job['id']}: {job['status']}")
    if job["status"] == "running":  # the worker acts at its next step
        render.out.print(f"The worker stops at its next step; `finetune jobs follow {job['id']}` shows when.")


@jobs_cli.command("cancel")
@client_command
def cancel(job_id: JobId, url: UrlOption = DEFAULT_URL, key: KeyOption = None, json_out: JsonOption = False) -> None:
    """Cancel a job: at once if no worker holds it, else at the worker's next step."""
    _action(job_id, "cancel", url, key, json_out)


@jobs_cli.command("pause")
@client_command
def pause(job_id: JobId, url: UrlOption = DEFAULT_URL, key: KeyOption = None, json_out: JsonOption = False) -> None:
    """Pause a job; a running one saves a checkpoint first."""
    _action(job_id, "pause", url, key, json_out)


@jobs_cli.command("resume")
@client_command
def resume(job_id: JobId, url: UrlOption = DEFAULT_URL, key: KeyOption = None, json_out: JsonOption = False) -> None:
    """Queue a paused job again; it continues from its last checkpoint."""
    _action(job_id, "resume", url, key, json_out)


@jobs_cli.command("follow")
@client_command
def follow(job_id: JobId, reconnect_for: ReconnectOption = 300.0, url: UrlOption = DEFAULT_URL,
           key: KeyOption = None,
           json_out: Annotated[bool, typer.Option("--json", help="Print each event's raw JSON, one per line.")] = False,
           ) -> None:
    """Follow a job live: progress bar (step, ETA, samples/s), latest loss and evaluation, a loss sparkline.
    Survives dropped connections (resumes with Last-Event-ID). Exit code: 0 succeeded, 1 failed,
    2 cancelled; Ctrl-C detaches (130) and leaves the job running."""
    with connect(url, key) as api:
        raise typer.Exit(follow_job(api, job_id, json_out, reconnect_for))
