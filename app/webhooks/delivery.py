"""Webhook delivery: the dispatcher that empties the outbox — concurrently, fairly across projects, and
within bounds, so one tenant's slow receivers cannot hold up another tenant's notifications.

* Due rows are picked fairly: each query returns at most ``FT_WEBHOOK_PROJECT_CONCURRENCY`` rows of each
  project, every project's oldest before any project's second (``ROW_NUMBER() OVER (PARTITION BY
  project)``, on SQLite and PostgreSQL alike), skipping projects whose deliveries in flight are at that limit.
* Each row is claimed with a conditional UPDATE before it is sent (two replicas never send one message
  twice; a claim outlasts the longest a delivery may take), POSTed through the guarded client of
  :mod:`app.webhooks.outbound` within a total timeout (``FT_WEBHOOK_TIMEOUT_S``, connect to last byte),
  and its outcome recorded, with backoff after a failure.
* Deliveries run as tasks of one asyncio loop, at most ``FT_WEBHOOK_CONCURRENCY`` at once: a slow receiver
  holds one slot, never the dispatcher, which starts other projects' deliveries meanwhile (at the latest
  at its next poll, ``FT_WEBHOOK_POLL_S``).
* :class:`WebhookDispatcher` runs that loop in a daemon thread of each API process; :func:`deliver_due` is
  one synchronous pass, for tests and scripts, that waits for what it started.

Database work runs in threads (``asyncio.to_thread``): the sessions are synchronous SQLAlchemy. Host name
lookups run in anyio's worker threads instead, so lookups stuck on a slow DNS server cannot hold it up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import func, select, update

from app.config import Settings, get_settings
from app.db.engine import session_scope
from app.db.models import WebhookDelivery, WebhookEndpoint
from app.jobs.notifications import DELIVERED, FAILED, PENDING
from app.webhooks import outbound
from app.webhooks.signing import backoff_s, sign

log = logging.getLogger(__name__)

# A claim lasts a delivery's total timeout plus this margin for the database work around it.
CLAIM_MARGIN_S = 60.0
# The most deliveries one synchronous pass starts.
PASS_LIMIT = 100
# What is kept of a failed answer's body: bytes read, then characters stored (after escaping).
SNIPPET_BYTES = 512
SNIPPET_CHARS = 200
ERROR_CHARS = 500


def claim_s(settings: Settings) -> float:
    """How long a claimed delivery stays invisible to other dispatchers: longer than a delivery may take,
    so a claim lapses only when its dispatcher died mid-send (the message is then sent again:
    at-least-once delivery)."""
    return settings.webhook_timeout_s + CLAIM_MARGIN_S


# --- the outbox, in SQL (blocking; called in threads) ------------------------------------------------------

@dataclass(frozen=True)
class DueDelivery:
    id: str
    project_id: str


def due_deliveries(now: float, limit: int, per_project: int, skip_projects: Collection[str] = (),
                   skip_ids: Collection[str] = ()) -> list[DueDelivery]:
    """Up to ``limit`` pending deliveries due at ``now``, at most ``per_project`` of each project, taken
    round-robin across projects (every project's oldest first)."""
    rank = func.row_number().over(partition_by=WebhookEndpoint.project_id,
                                  order_by=(WebhookDelivery.next_attempt_at, WebhookDelivery.id)).label("rank")
    query = (select(WebhookDelivery.id, WebhookEndpoint.project_id, WebhookDelivery.next_attempt_at, rank)
             .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
             .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now))
    if skip_projects:
        query = query.where(WebhookEndpoint.project_id.not_in(list(skip_projects)))
    if skip_ids:
        query = query.where(WebhookDelivery.id.not_in(list(skip_ids)))
    ranked = query.subquery()
    with session_scope() as session:
        rows = session.execute(select(ranked.c.id, ranked.c.project_id).where(ranked.c.rank <= per_project)
                               .order_by(ranked.c.rank, ranked.c.next_attempt_at).limit(limit))
        return [DueDelivery(id, project_id) for id, project_id in rows]


def _claim(delivery_id: str, now: float, settings: Settings) -> tuple[str, str, dict[str, Any], int] | None:
    """Take one due delivery for this dispatcher; None when another one got it first (or it is not due)."""
    with session_scope() as session:
        claimed = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING,
                   WebhookDelivery.next_attempt_at <= now)
            .values(next_attempt_at=now + claim_s(settings))
            .execution_options(synchronize_session=False)
        ).rowcount == 1
        if not claimed:
            return None
        row = session.execute(
            select(WebhookEndpoint.url, WebhookEndpoint.secret, WebhookDelivery.payload, WebhookDelivery.attempts)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(WebhookDelivery.id == delivery_id)
        ).one_or_none()
        return tuple(row) if row else None  # type: ignore[return-value]


def _record(delivery_id: str, attempts: int, error: str | None, now: float, settings: Settings) -> None:
    """Store one attempt's outcome. ``error`` is already printable (see :func:`send`): it is logged too."""
    attempts += 1
    if error is None:
        values: dict[str, Any] = {"status": DELIVERED, "attempts": attempts, "delivered_at": int(time.time()),
                                  "last_error": None}
    elif attempts >= settings.webhook_max_attempts:
        values = {"status": FAILED, "attempts": attempts, "last_error": error}
    else:
        values = {"attempts": attempts, "last_error": error,
                  "next_attempt_at": now + backoff_s(attempts, settings.webhook_backoff_s)}
    with session_scope() as session:
        session.execute(update(WebhookDelivery)
                        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING)
                        .values(**values).execution_options(synchronize_session=False))
    if error is None:
        log.info("webhook %s delivered (attempt %d)", delivery_id, attempts)
    else:
        log.warning("webhook %s attempt %d failed: %s%s", delivery_id, attempts, error,
                    " (giving up)" if values.get("status") == FAILED else "")


# --- one delivery over the network -------------------------------------------------------------------------

async def send(client: httpx.AsyncClient, url: str, secret: str, msg_id: str, payload: dict[str, Any],
               timeout_s: float) -> str | None:
    """POST one signed message; None on a 2xx answer, else why it failed, as one printable line."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(secret, msg_id, timestamp, body),
               "accept-encoding": "identity"}  # the body of an error is read raw, never inflated
    try:
        # One deadline for everything — lookup, connect, TLS, request, answer: httpx's own timeouts are per
        # operation, so a receiver sending a byte every few seconds would never trip them.
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, content=body, headers=headers) as response:
                if 200 <= response.status_code < 300:
                    return None
                snippet = bytearray()
                async for chunk in response.aiter_raw():
                    snippet += chunk
                    if len(snippet) >= SNIPPET_BYTES:
                        break
    except (TimeoutError, httpx.TimeoutException):
        return f"timed out: no complete answer within {timeout_s:g} s (FT_WEBHOOK_TIMEOUT_S)"
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return outbound.printable(f"{type(exc).__name__}: {exc}".rstrip(": "), ERROR_CHARS)
    text = outbound.printable(bytes(snippet[:SNIPPET_BYTES]).decode("utf-8", errors="replace").strip(),
                              SNIPPET_CHARS)
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")


# --- deliveries in flight ----------------------------------------------------------------------------------

class Deliveries:
    """The deliveries in flight in one event loop, and the bounds on starting more: in all
    (``FT_WEBHOOK_CONCURRENCY``) and per project (``FT_WEBHOOK_PROJECT_CONCURRENCY``)."""

    def __init__(self, settings: Settings, on_slot_free: Callable[[], None] | None = None):
        self.settings = settings
        self.attempted = 0  # deliveries claimed, POSTed and recorded
        self._on_slot_free = on_slot_free
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._per_project: Counter[str] = Counter()
        self._client: httpx.AsyncClient | None = None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def _http(self) -> httpx.AsyncClient:
        # Built on first use and kept for the loop's life: a dispatcher with nothing to send builds none.
        if self._client is None:
            settings = self.settings
            self._client = outbound.guarded_client(
                lambda: outbound.allowed_networks(tuple(settings.webhook_allowed_networks)),
                max_connections=settings.webhook_concurrency, timeout_s=settings.webhook_timeout_s)
        return self._client

    async def start_due(self, now: float | None = None, *, skip: Collection[str] = (),
                        limit: int | None = None) -> set[str]:
        """Start the due deliveries there is room for; their ids. ``now`` (default: the clock at each
        step) is when they are due, claimed and retried from."""
        room = self.settings.webhook_concurrency - len(self._tasks)
        room = room if limit is None else min(room, limit)
        if room <= 0:
            return set()
        cap = self.settings.webhook_project_concurrency
        full = [project for project, count in self._per_project.items() if count >= cap]
        rows = await asyncio.to_thread(due_deliveries, time.time() if now is None else now, room, cap, full,
                                       [*self._tasks, *skip])
        started: set[str] = set()
        for row in rows:
            if len(started) < room and self._per_project[row.project_id] < cap:
                self._start(row, now)
                started.add(row.id)
        return started

    def _start(self, row: DueDelivery, now: float | None) -> None:
        self._per_project[row.project_id] += 1
        task = asyncio.create_task(self._deliver(row.id, now), name=f"webhook {row.id}")
        self._tasks[row.id] = task

        def finished(_: asyncio.Task[None]) -> None:
            del self._tasks[row.id]
            self._per_project[row.project_id] -= 1
            if self._per_project[row.project_id] <= 0:
                del self._per_project[row.project_id]

        task.add_done_callback(finished)

    async def _deliver(self, delivery_id: str, now: float | None) -> None:
        try:
            claimed = await asyncio.to_thread(_claim, delivery_id, time.time() if now is None else now,
                                              self.settings)
            if claimed is not None:
                url, secret, payload, attempts = claimed
                error = await send(self._http(), url, secret, delivery_id, payload, self.settings.webhook_timeout_s)
                await asyncio.to_thread(_record, delivery_id, attempts, error, time.time() if now is None else now,
                                        self.settings)
                self.attempted += 1
        except Exception:  # one bad row must not stop the rest; a claimed one is retried when its claim lapses
            log.exception("webhook delivery %s failed unexpectedly", delivery_id)
            return  # no wake-up: a row failing at once must not turn the dispatcher into a busy loop
        if self._on_slot_free is not None:
            self._on_slot_free()

    async def wait_any(self) -> None:
        """Until one delivery in flight ends."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), return_when=asyncio.FIRST_COMPLETED)

    async def close(self) -> None:
        """Let the deliveries in flight end (each within its total timeout, outcome recorded), then close
        the client."""
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# --- the two ways to run it ----------------------------------------------------------------------------

def deliver_due(now: float | None = None, *, settings: Settings | None = None,
                stop: threading.Event | None = None) -> int:
    """One pass over the outbox: send the pending deliveries due at ``now`` (default: the clock), each at
    most once, within the concurrency bounds, and wait for them. Returns how many were attempted (claimed,
    POSTed and recorded) by this call; errors of one delivery are logged and do not stop the others."""
    settings = settings or get_settings()
    now = time.time() if now is None else now
    if not due_deliveries(now, 1, 1):
        return 0  # nothing due: no event loop, no HTTP client
    return asyncio.run(_one_pass(now, settings, stop))


async def _one_pass(now: float, settings: Settings, stop: threading.Event | None) -> int:
    deliveries, tried = Deliveries(settings), set()
    try:
        while True:
            if len(tried) < PASS_LIMIT and not (stop is not None and stop.is_set()):
                tried |= await deliveries.start_due(now, skip=tried, limit=PASS_LIMIT - len(tried))
            if not deliveries.in_flight:
                return deliveries.attempted
            await deliveries.wait_any()
    finally:
        await deliveries.close()


class WebhookDispatcher:
    """Delivers the outbox from a daemon thread running an asyncio loop. Safe to run in every API replica."""

    def __init__(self, settings: Settings | None = None, poll_s: float | None = None):
        self._settings = settings
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.alive:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="webhook-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop starting deliveries; wait for those in flight (each ends within FT_WEBHOOK_TIMEOUT_S)."""
        self._stop.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop has just closed
                pass
        if self._thread is not None:
            settings = self._settings or get_settings()
            self._thread.join(settings.webhook_timeout_s + 5 if timeout is None else timeout)
            self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception:
            log.exception("webhook dispatcher stopped unexpectedly")

    async def _serve(self) -> None:
        settings = self._settings or get_settings()
        wake = asyncio.Event()
        self._wake, self._loop = wake, asyncio.get_running_loop()
        deliveries = Deliveries(settings, on_slot_free=wake.set)
        try:
            while not self._stop.is_set():
                try:
                    await deliveries.start_due()
                except Exception:  # e.g. the database is briefly unreachable: log, wait, try again
                    log.exception("webhook dispatcher pass failed")
                # Until the poll interval passes, a slot frees up (more may be due) or stop() is called.
                try:
                    await asyncio.wait_for(wake.wait(), self._poll_s or settings.webhook_poll_s)
                except TimeoutError:
                    pass
                wake.clear()
        finally:
            await deliveries.close()
            self._loop = self._wake = None
