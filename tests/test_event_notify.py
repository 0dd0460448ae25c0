"""Event streams are woken by the database, not by polling it (app.services.event_bus).

Measured with a counter on the engine (SQLAlchemy's ``before_cursor_execute``), on SQLite and on a live
PostgreSQL: N idle followers of a job run no query at all over T seconds (before: each polled twice a
second, 2·N·T queries); on SQLite the one thing that runs is the bus's ``PRAGMA data_version``, a fixed
rate per process whatever N is. An event written by another connection reaches every follower within
100 ms, exactly once and in order, and one the notification of which was lost still arrives, from the
fallback check. The followers are the real ``follow()`` generators the SSE route streams."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, event, text, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.engine import engine_for
from app.db.migrate import upgrade
from app.db.models import Job, JobEvent, Project, now
from app.jobs.events import append_event
from app.services.event_bus import EventBus, JobFeed, StreamEvent
from app.services.event_stream import follow
from tests.support.live import postgres_database

FOLLOWERS = 200
IDLE_S = 2.0


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'events.sqlite'}"
        upgrade(url)
        yield url
    else:
        with postgres_database() as url:
            upgrade(url)
            yield url


@contextmanager
def writer(url: str):
    """A session on an engine of its own, as another process (a worker) would write."""
    engine = create_engine(url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            yield session
    finally:
        engine.dispose()


def _queued_job(url: str, project_id: str | None = None, kind: str = "fine_tune") -> str:
    job_id = f"ftjob-{uuid.uuid4().hex[:12]}"
    with writer(url) as session:
        if project_id is None:
            project_id = f"proj-{uuid.uuid4().hex[:8]}"
            session.add(Project(id=project_id, name=f"events-{uuid.uuid4().hex[:8]}", quotas={}))
            session.flush()
        session.add(Job(id=job_id, project_id=project_id, kind=kind, model="tiny/bert", task="text-classification",
                        training_file="file-x", seed=1, status="queued", created_at=now()))
        session.flush()
        append_event(session, job_id, "Validated training file.")
        append_event(session, job_id, "Job queued.", data={"status": "queued"})
        session.commit()
    return job_id


def _write_event(url: str, job_id: str, message: str, data: dict | None = None) -> float:
    """Appends an event as a worker does; returns when its commit started."""
    with writer(url) as session:
        append_event(session, job_id, message, data=data)
        session.flush()
        started = time.monotonic()
        session.commit()
    return started


class QueryCounter:
    def __init__(self, url: str):
        self.statements: list[str] = []
        self.engine = engine_for(url)
        event.listen(self.engine, "before_cursor_execute", self._count)

    def _count(self, conn, cursor, statement, *args) -> None:
        self.statements.append(statement)

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._count)


class Followers:
    """N real event streams of one job, each recording (seq, when it arrived)."""

    def __init__(self, bus: EventBus, job_id: str, n: int, after_seq: int = 0):
        self.received: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        self.tasks = [asyncio.create_task(self._follow(bus, job_id, after_seq, i)) for i in range(n)]

    async def _follow(self, bus, job_id, after_seq, index) -> None:
        async for message in follow(job_id, after_seq, bus):
            self.received[index].append((int(message["id"]), time.monotonic()))

    async def until_all_have(self, seq: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(r and r[-1][0] >= seq for r in self.received):
            assert time.monotonic() < deadline, f"not every follower got event {seq} in {timeout}s"
            await asyncio.sleep(0.005)

    def seqs(self) -> set[tuple[int, ...]]:
        return {tuple(seq for seq, _ in r) for r in self.received}


def _bus(url: str, **settings) -> EventBus:
    return EventBus(get_settings().model_copy(update=settings), database_url=url)


def test_idle_followers_run_no_queries_and_new_events_reach_all_within_100ms(database_url):
    job_id = _queued_job(database_url)
    sqlite = database_url.startswith("sqlite")

    async def scenario():
        bus = _bus(database_url)
        bus.start()
        try:
            followers = Followers(bus, job_id, FOLLOWERS)
            await followers.until_all_have(2, timeout=30)  # the replay of what was written before
            counter = QueryCounter(database_url)
            await asyncio.sleep(IDLE_S)
            idle = list(counter.statements)

            started = await asyncio.to_thread(_write_event, database_url, job_id, "Step 1/10.", {"step": 1})
            await followers.until_all_have(3, timeout=5)
            latest = max(r[-1][1] for r in followers.received) - started
            counter.close()
            await asyncio.to_thread(_write_event, database_url, job_id, "Job cancelled.", {"status": "cancelled"})
            await asyncio.wait_for(asyncio.gather(*followers.tasks), timeout=10)  # the terminal event ends them
            return idle, latest, followers.seqs()
        finally:
            bus.stop()

    idle, latest, seqs = asyncio.run(scenario())
    if sqlite:
        # Only the bus's look at SQLite's commit counter: a fixed rate per process, for 1 follower or 10,000
        # (per-stream polling ran FOLLOWERS * IDLE_S * 2 = 800 queries here).
        assert set(idle) <= {"PRAGMA data_version"}, idle
        assert len(idle) <= IDLE_S / get_settings().event_sqlite_poll_s + 5
    else:
        assert idle == []  # LISTEN: nothing runs until PostgreSQL says a job moved
    assert latest < 0.1, f"the slowest of {FOLLOWERS} followers got the event {latest * 1000:.0f} ms after its commit"
    assert seqs == {(1, 2, 3, 4)}  # every follower, every event, once, in order, then the end


def test_an_event_whose_notification_was_lost_arrives_from_the_fallback_check(database_url):
    job_id = _queued_job(database_url)

    async def scenario():
        bus = _bus(database_url, event_fallback_s=0.5)
        bus.start()
        try:
            followers = Followers(bus, job_id, 3)
            await followers.until_all_have(2, timeout=30)
            # Written by hand, without append_event: no NOTIFY (as if the listening connection had dropped).
            with writer(database_url) as session:
                session.execute(update(Job).where(Job.id == job_id).values(event_seq=3))
                session.add(JobEvent(id=f"ftevent-{uuid.uuid4().hex[:12]}", job_id=job_id, seq=3, created_at=now(),
                                     level="info", type="message", message="Written quietly.", data=None))
                session.commit()
            await followers.until_all_have(3, timeout=3)
            for task in followers.tasks:
                task.cancel()
            return followers.seqs()
        finally:
            bus.stop()

    assert asyncio.run(scenario()) == {(1, 2, 3)}


def test_a_follower_that_resumes_gets_only_what_it_missed(database_url):
    job_id = _queued_job(database_url)

    async def scenario():
        bus = _bus(database_url)
        bus.start()
        try:
            followers = Followers(bus, job_id, 5, after_seq=1)  # Last-Event-ID: 1
            await followers.until_all_have(2, timeout=30)
            await asyncio.to_thread(_write_event, database_url, job_id, "Job failed.", {"status": "failed"})
            await asyncio.wait_for(asyncio.gather(*followers.tasks), timeout=10)
            return followers.seqs()
        finally:
            bus.stop()

    assert asyncio.run(scenario()) == {(2, 3)}


def test_without_the_bus_a_stream_still_polls(tmp_path):
    """An app run without its lifespan (no subscription thread) keeps the old behaviour."""
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    upgrade(url)
    job_id = _queued_job(url)

    async def scenario():
        followers = Followers(_bus(url), job_id, 2)  # never started
        await followers.until_all_have(2, timeout=10)
        await asyncio.to_thread(_write_event, url, job_id, "Job cancelled.", {"status": "cancelled"})
        await asyncio.wait_for(asyncio.gather(*followers.tasks), timeout=5)
        return followers.seqs()

    assert asyncio.run(scenario()) == {(1, 2, 3)}


def test_the_feed_serves_from_memory_only_what_it_can_serve_whole():
    feed = JobFeed("ftjob-x", asyncio.new_event_loop())
    assert feed.events_after(0) is None  # not started: read the database
    feed.start(5)
    assert feed.events_after(5) == [] and feed.events_after(9) == []
    feed._publish([StreamEvent(seq, "{}", False) for seq in (6, 7, 8)])
    assert [e.seq for e in feed.events_after(5)] == [6, 7, 8]
    assert [e.seq for e in feed.events_after(7)] == [8]
    assert feed.events_after(4) is None  # event 5 is not in memory: the follower reads the database
    feed.loop.close()


def test_a_rolled_back_event_wakes_nobody():
    """PostgreSQL sends a notification with the commit of the transaction that wrote the event, never
    with its rollback (SQLite sends none: the bus sees commits only)."""
    import psycopg
    from sqlalchemy.engine import make_url

    with postgres_database() as database_url:
        upgrade(database_url)
        job_id = _queued_job(database_url)
        url = make_url(database_url)
        with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database,
                             autocommit=True) as listener:
            listener.execute("LISTEN ft_job_events")
            with writer(database_url) as session:
                append_event(session, job_id, "Never happened.")
                session.rollback()
                append_event(session, job_id, "Happened.")
                session.execute(text("SELECT 1"))
                session.commit()
            payloads = [n.payload for n in listener.notifies(timeout=1.0)]
    assert payloads == [job_id]  # one notification, from the commit


def test_the_event_routes_stream_through_the_process_bus(app, client):
    """Jobs' and evaluations' SSE routes, in the app with its lifespan: the replay, then an event written
    by another connection, then the end."""
    from app.services.keys import authenticate

    url = get_settings().resolved_database_url
    project = authenticate(client.headers["Authorization"].removeprefix("Bearer ")).project
    job_id, evaluation_id = _queued_job(url, project.id), _queued_job(url, project.id, kind="evaluation")
    for path in (f"/v1/fine_tuning/jobs/{job_id}/events", f"/v1/evaluations/{evaluation_id}/events"):
        ids = []
        with client.stream("GET", path, params={"stream": "true"}) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            while len(ids) < 2:
                line = next(lines)
                ids += [int(line[4:])] if line.startswith("id: ") else []
            assert app.state.event_bus.listening
            _write_event(url, path.split("/")[-2], "Cancelled.", {"status": "cancelled"})
            ids += [int(line[4:]) for line in lines if line.startswith("id: ")]  # until the stream ends
        assert ids == [1, 2, 3], path
