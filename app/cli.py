"""`finetune` — run the service, and use it.

Operator commands (on this machine's database and models folder):

  finetune serve     embedded default: migrations, API and one worker together; Ctrl-C stops both
  finetune api       the API alone (production: run `finetune migrate` first)
  finetune worker    one Celery worker on the GPU queue
  finetune migrate   apply database migrations
  finetune keys create|list|revoke      API keys of a project (scopes: predict, train, admin)
  finetune quota show|set|reset         a project's quotas (defaults: FT_QUOTA_*)

Client commands, over HTTP (docs/cli.md). Service: --url or FT_URL (default
http://127.0.0.1:8000). Key: --key or FT_API_KEY, else data/api_key (which
`make run` writes). --json prints the API's raw JSON.

  finetune files upload|list|get|delete  datasets and their validation report
  finetune jobs create|list|get          jobs (create: -p key=value, --lora)
  finetune jobs cancel|pause|resume ID
  finetune jobs follow ID                live; exits 0 ok/1 failed/2 cancelled
  finetune predict MODEL "text…"         or --file inputs.jsonl, in batches
  finetune chat MODEL                    a conversation, answers streamed
  finetune models list|get|delete|download
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import typer

from app.cli_admin import import_model, keys_cli, quota_cli
from app.client import chat, files_cli, jobs_cli, models_cli, predict
from app.config import get_settings

# Longer than the idle time of client connection pools (httpx: 5 s), so the server never closes a
# kept-alive connection just as a client reuses it (a "connection reset" the client cannot tell apart).
KEEP_ALIVE_S = 65
# httptools (uvicorn's fast parser) with a bound on request heads: see app/http_protocol.py.
HTTP_PROTOCOL = "app.http_protocol:HeadLimitedHttpToolsProtocol"

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _prepare() -> None:
    from app.db.engine import session_scope
    from app.db.migrate import upgrade
    from app.services.keys import BOOTSTRAP_KEY_NAME, any_key_exists, hash_key, issue_key, revoke_other_bootstrap_keys
    from app.services.projects import get_or_create_project

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _owner_only(settings.data_dir)  # the database (webhook secrets), uploads and models are the tenants'
    upgrade(settings.resolved_database_url)
    with session_scope() as session:
        if settings.bootstrap_api_key:
            project = get_or_create_project(session, "default")
            issue_key(session, project, scope="admin", name=BOOTSTRAP_KEY_NAME, key=settings.bootstrap_api_key)
            if revoke_other_bootstrap_keys(session, project.id, hash_key(settings.bootstrap_api_key)):
                typer.echo("FT_BOOTSTRAP_API_KEY changed: the previous bootstrap key is revoked.")
        elif not any_key_exists(session):
            _, key = issue_key(session, get_or_create_project(session, "default"), scope="admin", name="first start")
            key_file = settings.data_dir / "api_key"
            # Created readable by its owner only: never a moment when other users could read the key.
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(key + "\n")
            typer.echo(f"Created an API key for project 'default'; it is in {key_file}.")


def _owner_only(folder) -> None:
    try:
        folder.chmod(0o700)
    except OSError as exc:  # a mount we do not own: say so, the operator decides
        typer.echo(f"warning: cannot make {folder} private to this user ({exc}); other users may read it.", err=True)


def die_with_parent() -> None:
    """Linux: a child started with this as preexec_fn is killed when its parent dies, even by kill -9,
    so a crashed `finetune serve` never leaves an orphan worker behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def offered_devices(settings) -> int:
    """Devices this machine's worker offers one job: FT_WORKER_DEVICES, else the GPUs it sees, else
    (no GPU) up to 8 CPU processes."""
    if settings.worker_devices:
        return settings.worker_devices
    import torch

    return torch.cuda.device_count() or 8  # reads the driver only: no CUDA context before the fork


def _worker_command(concurrency: int) -> list[str]:
    from app.jobs.queue import worker_queues

    settings = get_settings()
    queues = ",".join(worker_queues(settings.gpu_queue, offered_devices(settings)))
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queues,
            "--concurrency", str(concurrency), "--loglevel", "INFO", "-n", f"gpu-worker-{os.getpid()}@%h"]


def api_workers(settings, embedded: bool) -> int:
    """API processes (uvicorn workers): FT_API_WORKERS, else one per core up to 4 for `finetune api` on
    PostgreSQL. One otherwise: `finetune serve` is the all-in-one of one machine, whose cores also train;
    SQLite takes one writer at a time; and a serving replica's loaded models belong to one process (each
    worker would load its own copy). Several workers each keep their own key memory, open-stream and
    request-rate counts, model cache and event subscription (docs/architecture.md)."""
    if settings.api_workers:
        return settings.api_workers
    if embedded or settings.serve_mode == "predictions" or \
            not settings.resolved_database_url.startswith("postgresql"):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 4))


@cli.command()
def serve(host: str = typer.Option(None), port: int = typer.Option(None), worker: bool = True) -> None:
    """Embedded default: API and one worker, started and stopped together."""
    settings = get_settings()
    _prepare()
    child = subprocess.Popen(_worker_command(1), preexec_fn=die_with_parent) if worker else None
    try:
        _run_api(settings, host, port, api_workers(settings, embedded=True))
    finally:
        if child and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # warm shutdown: a running job's message goes back to the queue
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


@cli.command()
def api(host: str = typer.Option(None), port: int = typer.Option(None),
        workers: int = typer.Option(None, min=1, max=64, help="API processes; default FT_API_WORKERS, else "
                                                               "min(cores, 4) on PostgreSQL, 1 on SQLite.")) -> None:
    """The API alone."""
    settings = get_settings()
    _prepare()
    _run_api(settings, host, port, workers or api_workers(settings, embedded=False))


def _run_api(settings, host: str | None, port: int | None, workers: int) -> None:
    import uvicorn

    from app import api_processes

    options = dict(factory=True, host=host or settings.api_host, port=port or settings.api_port, workers=workers,
                   timeout_keep_alive=KEEP_ALIVE_S, http=HTTP_PROTOCOL, access_log=settings.access_log)
    if workers > 1 and api_processes.spreads_connections():
        api_processes.run(uvicorn.Config("app.main:create_app", **options))
    else:
        uvicorn.run("app.main:create_app", **options)


@cli.command()
def worker(concurrency: int = 1) -> None:
    """One Celery worker on the GPU queues: one per GPU, or one per machine for jobs of several GPUs."""
    os.execv(sys.executable, _worker_command(concurrency))


@cli.command()
def migrate() -> None:
    """Apply database migrations (and create the bootstrap key, if one is configured)."""
    _prepare()
    typer.echo("Database is up to date.")


@cli.command("create-key")
def create_key(project: str = typer.Option("default", help="Project (tenant) the key belongs to."),
               scope: str = typer.Option("admin", help="predict, train or admin.")) -> None:
    """Print a new API key for PROJECT (created if new). It is shown only once."""
    from app.cli_admin import issue

    issue(project, scope, name="cli", expires_in_days=None)


cli.add_typer(keys_cli, name="keys")
cli.add_typer(quota_cli, name="quota")
cli.command("import-model")(import_model)
# The client commands: HTTP to a running service (app/client).
cli.add_typer(files_cli, name="files")
cli.add_typer(jobs_cli, name="jobs")
cli.add_typer(models_cli, name="models")
cli.command("predict")(predict)
cli.command("chat")(chat)


def main() -> None:
    # Everything this service writes (database, uploads, models) is readable by its owner only.
    os.umask(0o077)
    cli()


if __name__ == "__main__":
    main()
