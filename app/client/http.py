"""HTTP to the fine-tuning service: an httpx client with the API key, the API's errors as
:class:`ApiError`, a network failure as :class:`Unreachable`, and Server-Sent Events read with
httpx-sse. The client commands talk to the service through this module only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import EventSource, ServerSentEvent

DEFAULT_URL = "http://127.0.0.1:8000"
# Long enough for the slow answers (a job created on a large file is checked row by row first, a model
# loads on its first prediction); streams wait longer still between events (see ``stream``).
TIMEOUT = httpx.Timeout(300.0, connect=10.0)
# Past the server's keep-alive pings (FT_SSE_PING_S, 15 s by default): silence this long is a dead link.
STREAM_READ_TIMEOUT_S = 60.0


class ApiError(Exception):
    """The service answered an error: its OpenAI-shaped ``{"error": {"message", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def __str__(self) -> str:
        where = ", ".join(f"{name}: {value}" for name, value in (("param", self.param), ("code", self.code)) if value)
        return f"{self.message} (HTTP {self.status}{', ' + where if where else ''})"


class Unreachable(Exception):
    """No answer at all: the service is down, the URL is wrong, or the connection broke."""


def key_file() -> Path:
    """Where `make run` (the first start of `finetune serve`) writes the first API key."""
    return Path(os.environ.get("FT_DATA_DIR") or "data") / "api_key"


def resolve_key(explicit: str | None) -> str | None:
    """--key / FT_API_KEY, else the key file `make run` wrote, else none (the service will say 401)."""
    if explicit:
        return explicit.strip()
    try:
        return key_file().read_text().strip() or None
    except OSError:
        return None


def path_part(value: str, *, slashes: bool = False) -> str:
    """An id as one URL path segment. Model ids keep their '/' and ':' (the API routes them as paths)."""
    return quote(value, safe="/:" if slashes else ":")


def _error_of(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        message, param, code = error["message"], error.get("param"), error.get("code")
    except (ValueError, KeyError, TypeError):  # not the service (a proxy's page, a wrong URL)
        text = response.text.strip()[:300] or response.reason_phrase
        return ApiError(response.status_code, f"Unexpected answer from {response.request.url}: {text}")
    if response.status_code == 429 and response.headers.get("retry-after"):
        message += f" Retry after {response.headers['retry-after']} s."
    return ApiError(response.status_code, message, param, code)


class Api:
    """One connection to the service: ``url`` and an API key (Bearer)."""

    def __init__(self, url: str, key: str | None, timeout: httpx.Timeout = TIMEOUT):
        self.url = url.rstrip("/")
        self.has_key = bool(key)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON, or :class:`ApiError` / :class:`Unreachable`."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(self._unreachable(exc)) from exc
        if response.is_error:
            raise _error_of(response)
        try:
            return response.json()
        except ValueError:  # something else answers at that URL
            raise ApiError(response.status_code, f"{response.request.url} did not answer JSON: is --url the "
                                                 "fine-tuning service?") from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=json, **kwargs)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def pages(self, path: str, limit: int, **params: Any) -> Iterator[dict]:
        """Objects of a paged list, newest first, until ``limit`` of them or the end."""
        after = None
        while limit > 0:
            page = self.get(path, limit=min(limit, 100), after=after, **params)
            yield from page["data"][:limit]
            limit -= len(page["data"])
            if not page.get("has_more") or not page["data"]:
                return
            after = page["last_id"]

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed answer (checked: an error answer raises before anything is read from it)."""
        timeout = httpx.Timeout(TIMEOUT.connect, read=STREAM_READ_TIMEOUT_S, write=TIMEOUT.write, pool=TIMEOUT.pool)
        try:
            with self._http.stream(method, path, timeout=kwargs.pop("timeout", timeout), **kwargs) as response:
                if response.is_error:
                    response.read()
                    raise _error_of(response)
                yield response
        except httpx.TransportError as exc:  # also a connection dropped in the middle of the stream
            raise Unreachable(self._unreachable(exc)) from exc

    def events(self, method: str, path: str, **kwargs: Any) -> Iterator[ServerSentEvent]:
        """The Server-Sent Events of a streamed answer, keep-alive pings left out."""
        headers = {**kwargs.pop("headers", {}), "Accept": "text/event-stream", "Cache-Control": "no-store"}
        with self.stream(method, path, headers=headers, **kwargs) as response:
            for event in EventSource(response).iter_sse():
                # httpx-sse dispatches the blank line after a ping comment as an event without data once
                # an id was seen; the SSE specification dispatches nothing without data.
                if event.data:
                    yield event

    def _unreachable(self, exc: httpx.TransportError) -> str:
        reason = str(exc) or type(exc).__name__
        return f"Cannot reach the service at {self.url} ({reason}). Is it running? Set --url or FT_URL."
