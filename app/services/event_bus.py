"""One subscription per API process to "this job has new events", shared by every event stream of it.

Each open stream used to poll the database twice a second: 1,000 followers cost 2,000 queries a second
while nothing happened. Now a thread of the API process (started with the app) holds the only
subscription — PostgreSQL ``LISTEN`` on the channel :mod:`app.jobs.notify` writes to, or on SQLite a look
at ``PRAGMA data_version`` every FT_EVENT_SQLITE_POLL_S — and when a followed job moves it reads the new
events **once**, for all the process's followers of that job, who take them from memory (a :class:`JobFeed`
per job). A stream reads the database itself only to replay what its client missed (``Last-Event-ID``) and
when it is further behind than the feed remembers.

A notification only says "look again": the events always come from the database in sequence order, so
a lost one (a dropped connection) only delays them. After (re)connecting, and every FT_EVENT_FALLBACK_S,
the thread compares the followed jobs' sequence numbers with what it has read: one query for all of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.engine import make_url

from app.config import Settings
from app.db.engine import engine_for
from app.db.models import Job, JobEvent
from app.jobs.notify import CHANNEL
from app.jobs.states import TERMINAL
from app.schemas.jobs import EventObject

log = logging.getLogger(__name__)

PAGE = 500  # events read per query
TAIL = 128  # events a feed remembers, for followers a little behind
_ID_CHUNK = 500  # job ids per sequence-number query

# Core, not ORM: a stream's rows become JSON at once, and nothing else needs them.
_EVENTS_AFTER = (select(*JobEvent.__table__.c)
                 .where(JobEvent.job_id == bindparam("job_id"), JobEvent.seq > bindparam("after"))
                 .order_by(JobEvent.seq).limit(bindparam("limit")))
_JOB_STATE = select(Job.status, Job.event_seq).where(Job.id == bindparam("job_id"))


@dataclass(frozen=True)
class StreamEvent:
    seq: int
    data: str  # the event as the stream sends it (JSON), encoded once for all followers
    final: bool  # the job's terminal event: its last


def read_events(conn: Connection, job_id: str, after_seq: int, limit: int = PAGE) -> list[StreamEvent]:
    rows = conn.execute(_EVENTS_AFTER, {"job_id": job_id, "after": after_seq, "limit": limit}).all()
    events = []
    for row in rows:
        event = EventObject.model_validate(row, from_attributes=True).model_dump()
        events.append(StreamEvent(row.seq, json.dumps(event), (row.data or {}).get("status") in TERMINAL))
    return events


class JobFeed:
    """The new events of one job, read once for all its followers in this process. ``fetched`` belongs
    to the reading threads (under ``_state``); ``tail`` and ``read_up_to`` to the event loop."""

    def __init__(self, job_id: str, loop: asyncio.AbstractEventLoop):
        self.job_id, self.loop = job_id, loop
        self.waiting: set[asyncio.Event] = set()
        self.tail: deque[StreamEvent] = deque(maxlen=TAIL)
        self.read_up_to: int | None = None
        self.fetched: int | None = None  # None until the first follower has read up to the present
        self.woken_early = False  # the job moved before that: read once it has
        self.reading = threading.Lock()  # one reader of new events at a time
        self._state = threading.Lock()

    def events_after(self, seq: int) -> list[StreamEvent] | None:
        """The remembered events after ``seq``; None if memory does not reach back to ``seq + 1``."""
        if self.read_up_to is None:
            return None
        if seq >= self.read_up_to:
            return []
        if self.tail and self.tail[0].seq <= seq + 1:
            return [event for event in self.tail if event.seq > seq]
        return None

    def start(self, seq: int) -> bool:
        """Called by a follower that has read everything up to ``seq``; True if the feed must read now."""
        with self._state:
            if self.fetched is not None:
                return False
            self.fetched, woken, self.woken_early = seq, self.woken_early, False
        self.read_up_to = seq
        return woken

    def _publish(self, events: list[StreamEvent]) -> None:  # in the event loop
        self.tail.extend(events)
        self.read_up_to = events[-1].seq
        self.wake()

    def wake(self) -> None:
        for waiting in self.waiting:
            waiting.set()


class Subscription:
    """A stream's place in its job's feed; :meth:`arm` before reading so that no wake-up is missed."""

    def __init__(self, bus: EventBus, feed: JobFeed):
        self._bus, self.feed, self._woken = bus, feed, asyncio.Event()
        feed.waiting.add(self._woken)

    def arm(self) -> None:
        self._woken.clear()

    async def wait(self) -> None:
        await self._woken.wait()

    def close(self) -> None:
        self.feed.waiting.discard(self._woken)
        self._bus._leave(self.feed)


class EventBus:
    def __init__(self, settings: Settings, database_url: str | None = None):
        self.url = database_url or settings.resolved_database_url
        self.engine = engine_for(self.url)
        self.fallback_s, self.sqlite_poll_s = settings.event_fallback_s, settings.event_sqlite_poll_s
        self._feeds: dict[str, JobFeed] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- the event loop's side ---------------------------------------------------------------------

    def start(self) -> None:
        """Starts the subscription thread; call from the event loop the streams run in."""
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        target = self._listen_postgres if self.engine.dialect.name == "postgresql" else self._watch_sqlite
        self._thread = threading.Thread(target=self._run, args=(target,), name="event-bus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def listening(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def subscribe(self, job_id: str) -> Subscription | None:
        """A place in the job's feed; None where this loop has no subscription (streams then poll)."""
        loop = asyncio.get_running_loop()
        if not self.listening or loop is not self._loop:
            return None
        with self._lock:
            feed = self._feeds.get(job_id)
            if feed is None:
                feed = self._feeds[job_id] = JobFeed(job_id, loop)
        return Subscription(self, feed)

    def read_soon(self, feed: JobFeed) -> None:
        def read() -> None:
            try:
                self._read_new(feed)
            except Exception:  # the fallback check reads it later
                log.warning("reading new events of %s failed", feed.job_id, exc_info=True)

        self._loop.run_in_executor(None, read)

    def read(self, job_id: str, after_seq: int) -> tuple[list[StreamEvent], str | None, int]:
        """(events after ``after_seq``, the job's status, its newest sequence number), from the database;
        the job is read after its events, so the newest number covers every event returned."""
        with self.engine.connect() as conn:
            events = read_events(conn, job_id, after_seq)
            state = conn.execute(_JOB_STATE, {"job_id": job_id}).first()
        return events, (state.status if state else None), (state.event_seq if state else after_seq)

    def _leave(self, feed: JobFeed) -> None:
        with self._lock:
            if not feed.waiting and self._feeds.get(feed.job_id) is feed:
                del self._feeds[feed.job_id]

    # --- the subscription thread ---------------------------------------------------------------------

    def _run(self, listen: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                listen()
            except Exception:  # a dropped connection, a database restarting: subscribe again, catch up
                log.warning("event notifications interrupted; subscribing again", exc_info=True)
                self._stop.wait(1.0)

    def _listen_postgres(self) -> None:
        import psycopg

        url = make_url(self.url)
        params = {"host": url.host, "port": url.port, "user": url.username, "password": url.password,
                  "dbname": url.database, **url.query}
        with psycopg.connect(autocommit=True, **{k: v for k, v in params.items() if v is not None}) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._catch_up()  # whatever was committed while nobody listened
            next_check = time.monotonic() + self.fallback_s
            while not self._stop.is_set():
                for note in conn.notifies(timeout=min(0.5, max(0.0, next_check - time.monotonic()))):
                    self._wake(note.payload)
                if time.monotonic() >= next_check:
                    self._catch_up()
                    next_check = time.monotonic() + self.fallback_s

    def _watch_sqlite(self) -> None:
        # One connection for the thread's life: data_version counts commits of *other* connections.
        with self.engine.connect() as conn:
            seen, next_check = None, 0.0
            while not self._stop.wait(self.sqlite_poll_s):
                if not self._feeds:
                    seen = None
                    continue
                version = conn.exec_driver_sql("PRAGMA data_version").scalar()
                conn.rollback()
                if version != seen or time.monotonic() >= next_check:
                    seen, next_check = version, time.monotonic() + self.fallback_s
                    self._catch_up()

    def _wake(self, job_id: str) -> None:
        feed = self._feeds.get(job_id)
        if feed is not None:
            self._read_new(feed)

    def _catch_up(self) -> None:
        """Reads the new events of every followed job whose sequence number moved past what was read."""
        with self._lock:
            feeds = list(self._feeds.values())
        started = {}
        for feed in feeds:
            with feed._state:
                if feed.fetched is None:
                    feed.woken_early = True  # its first follower is reading; it reads again once done
                else:
                    started[feed.job_id] = feed
        ids = list(started)
        for first in range(0, len(ids), _ID_CHUNK):
            with self.engine.connect() as conn:
                rows = conn.execute(select(Job.id, Job.event_seq).where(Job.id.in_(ids[first:first + _ID_CHUNK])))
                moved = [started[row.id] for row in rows if row.event_seq > (started[row.id].fetched or 0)]
            for feed in moved:
                self._read_new(feed)

    def _read_new(self, feed: JobFeed) -> None:
        """Reads the feed's events after what it has read, and hands them to its followers."""
        with feed.reading:
            with feed._state:
                since = feed.fetched
                if since is None:
                    feed.woken_early = True
                    return
            while True:
                with self.engine.connect() as conn:
                    events = read_events(conn, feed.job_id, since)
                if not events:
                    return
                since = events[-1].seq
                with feed._state:
                    feed.fetched = since
                try:
                    feed.loop.call_soon_threadsafe(feed._publish, events)
                except RuntimeError:  # the loop has closed: nobody is following any more
                    return
                if len(events) < PAGE:
                    return
