"""What every client command shares: the --url / --key / --json options (also read from FT_URL and
FT_API_KEY), the connection they make, `key=value` parameters, and the exit codes:

  0  done (`follow`: the job succeeded)
  1  `follow`: the job failed; `files upload`: the file has errors
  2  `follow`: the job was cancelled (also click's code for a wrong command line)
  3  the service answered an error (its message is printed)
  4  the service could not be reached
  130  `follow` detached by Ctrl-C (the job goes on)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Annotated, Any

import typer

from app.client.http import DEFAULT_URL, Api, ApiError, Unreachable, resolve_key
from app.client.render import error

API_ERROR, UNREACHABLE, DETACHED = 3, 4, 130

UrlOption = Annotated[str, typer.Option(
    "--url", envvar="FT_URL", help="The service's base URL.", rich_help_panel="Connection")]
KeyOption = Annotated[str | None, typer.Option(
    "--key", envvar="FT_API_KEY", show_default=False, rich_help_panel="Connection",
    help="API key. Default: FT_API_KEY, else the key `make run` wrote to data/api_key ($FT_DATA_DIR/api_key).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's raw JSON (for scripts) instead of tables.")]
ParamsOption = Annotated[list[str] | None, typer.Option(
    "-p", "--param", metavar="KEY=VALUE", show_default=False,
    help="Repeatable. The value is read as JSON when it parses (2e-5, 16, true, [\"q\",\"v\"]), else as text.")]


def connect(url: str, key: str | None) -> Api:
    return Api(url or DEFAULT_URL, resolve_key(key))


def client_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """The API's error message and a short exit code instead of a traceback."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ApiError as exc:
            error(str(exc))
            if exc.status == 401 and exc.code == "missing_api_key":
                error("No API key given: pass --key, set FT_API_KEY, or run where data/api_key is.")
            raise typer.Exit(API_ERROR) from None
        except Unreachable as exc:
            error(str(exc))
            raise typer.Exit(UNREACHABLE) from None

    return run


def parse_params(assignments: list[str] | None) -> dict[str, Any]:
    """``["learning_rate=2e-5", "batch_size=16", "scheduler=cosine"]`` → ``{"learning_rate": 2e-5, ...}``."""
    params: dict[str, Any] = {}
    for assignment in assignments or []:
        name, sep, raw = assignment.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"'{assignment}' is not KEY=VALUE.", param_hint="-p")
        try:
            params[name.strip()] = json.loads(raw)
        except ValueError:
            params[name.strip()] = raw
    return params
