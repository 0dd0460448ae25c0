"""Operator commands: `finetune keys …` and `finetune quota …` for tenants, `finetune import-model` for
base models. They work on the database and the models folder directly (no API key needed: whoever
runs them holds the deployment's settings)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

keys_cli = typer.Typer(no_args_is_help=True, help="API keys of a project: create, list, revoke.")
quota_cli = typer.Typer(no_args_is_help=True, help="A project's quotas: the FT_QUOTA_* defaults, or overrides.")


def _prepared():
    from app.cli import _prepare
    from app.db.engine import session_scope

    _prepare()
    return session_scope()


def _project_or_exit(session, name: str):
    from app.services.projects import get_project

    project = get_project(session, name)
    if project is None:
        typer.echo(f"No project named '{name}'.", err=True)
        raise typer.Exit(1)
    return project


def _when(timestamp: int | None) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC") if timestamp else "-"


def issue(project: str, scope: str, name: str, expires_in_days: float | None) -> None:
    from app.errors import ApiError
    from app.services.keys import issue_key
    from app.services.projects import get_or_create_project

    expires_at = int(time.time() + expires_in_days * 86400) if expires_in_days else None
    with _prepared() as session:
        try:
            _, key = issue_key(session, get_or_create_project(session, project), scope=scope, name=name,
                               expires_at=expires_at)
        except ApiError as exc:
            typer.echo(exc.message, err=True)
            raise typer.Exit(2) from None
    typer.echo(key)


@keys_cli.command("create")
def create(project: str = typer.Option("default", help="Project (tenant) the key belongs to; created if new."),
           scope: str = typer.Option("predict", help="predict, train or admin."),
           name: str = typer.Option("", help="A label to tell keys apart."),
           expires_in_days: float = typer.Option(None, help="Days until the key stops working (default: never).")
           ) -> None:
    """Print a new key. It is shown only this once; only its hash is stored."""
    issue(project, scope, name, expires_in_days)


@keys_cli.command("list")
def list_(project: str = typer.Option("default")) -> None:
    """The project's keys, newest first (revoked ones too)."""
    from app.services.keys import KEY_PREFIX, list_keys

    with _prepared() as session:
        rows = list_keys(session, _project_or_exit(session, project).id, None, 10_000)
        for key in rows:
            state = f"revoked {_when(key.revoked_at)}" if key.revoked_at else \
                f"expires {_when(key.expires_at)}" if key.expires_at else "active"
            typer.echo(f"{key.id}  {KEY_PREFIX}…{key.last4 or '????'}  {key.scope:<7}  {state:<28}  {key.name}")


@keys_cli.command("revoke")
def revoke(key_id: str) -> None:
    """Revoke a key by id: refused at once by new API processes, by running ones within FT_AUTH_CACHE_S."""
    from app.db.models import ApiKey
    from app.services.keys import revoke as revoke_key

    with _prepared() as session:
        row = session.get(ApiKey, key_id)
        if row is None:
            typer.echo(f"No key with id '{key_id}'.", err=True)
            raise typer.Exit(1)
        revoke_key(session, row)
    typer.echo(f"Revoked {key_id}.")


@quota_cli.command("show")
def show(project: str = typer.Option("default")) -> None:
    """Each quota of the project, and whether it is the default or an override."""
    from app.services.keys import ProjectRef
    from app.services.quotas import QUOTAS, limit

    with _prepared() as session:
        row = _project_or_exit(session, project)
        ref = ProjectRef(row.id, row.name, dict(row.quotas or {}))
    for name, meaning in QUOTAS.items():
        source = "override" if name in ref.quotas else "default"
        typer.echo(f"{name:<18} {limit(ref, name):>16g}  ({source}) {meaning}")


@quota_cli.command("set")
def set_(values: Annotated[list[str], typer.Argument(help="NAME=VALUE pairs, e.g. active_jobs=200 files=5000")],
         project: str = typer.Option("default")) -> None:
    """Override quotas of one project. API processes apply it within FT_AUTH_CACHE_S."""
    from app.services.quotas import check_override

    with _prepared() as session:
        row = _project_or_exit(session, project)
        quotas = dict(row.quotas or {})
        for pair in values:
            name, _, value = pair.partition("=")
            try:
                quotas[name] = check_override(name, value)
            except ValueError as exc:
                typer.echo(f"{pair}: {exc}", err=True)
                raise typer.Exit(2) from None
        row.quotas = quotas
    show(project)


@quota_cli.command("reset")
def reset(names: Annotated[list[str] | None, typer.Argument(help="Quotas to reset (default: all).")] = None,
          project: str = typer.Option("default")) -> None:
    """Back to the deployment's defaults."""
    with _prepared() as session:
        row = _project_or_exit(session, project)
        row.quotas = {k: v for k, v in (row.quotas or {}).items() if names and k not in names}
    show(project)


def import_model(file: Annotated[Path, typer.Argument(help="The .gguf file to convert.")],
                 name: Annotated[str, typer.Option("--name", help="Model id to offer it as: name or org/name.")],
                 dtype: Annotated[str, typer.Option(help="float32 (exact dequantized weights) or bfloat16 "
                                                         "(half the size).")] = "float32",
                 force: Annotated[bool, typer.Option("--force", help="Replace a base model of that name.")] = False,
                 ) -> None:
    """Convert a GGUF file into a base model: safetensors, config and tokenizer under FT_BASE_MODELS_DIR/NAME.

    Jobs can use it at once as `model`; the folder appears only once it is complete."""
    from app.config import get_settings
    from app.ml.gguf_import import GgufImportError, import_gguf

    models_dir = get_settings().resolved_base_models_dir
    try:
        folder = import_gguf(file, name, models_dir, dtype=dtype, force=force)
    except GgufImportError as exc:
        typer.echo(f"import-model: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"Imported {file} into {folder}")
    typer.echo(f"Model id: {name}")
