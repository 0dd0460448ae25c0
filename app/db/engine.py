"""Engine and sessions. The API and the worker each open their own engine from the same Settings."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings

log = logging.getLogger(__name__)


@lru_cache
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        # Room for the request threads (anyio runs up to 40): with SQLAlchemy's default of 5 idle
        # connections, reads from 16 clients at once closed and reopened connections (pragmas and all).
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20,
                               max_overflow=20)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            # WAL lets the API read while the worker writes progress; busy_timeout makes the two
            # processes wait for each other instead of failing with "database is locked".
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@lru_cache
def read_engine_for(url: str) -> Engine:
    """The pool of app.services.reads. On a server database its connections are in autocommit (no BEGIN
    before a read, no ROLLBACK after) and are not pinged before each use: on PostgreSQL the ping and
    the transaction were three of a job GET's four round trips, and the ping alone a third of the read's
    CPU (584 → 393 µs). A read that meets a dropped connection runs again instead
    (reads._on_a_read_connection). Eight connections: the API reads on at most eight threads
    (app.api.presenters), and the event streams' own reads share the overflow. SQLite's driver opens
    no transaction for a SELECT and pings nothing, so SQLite reads share the one engine."""
    if url.startswith("sqlite"):
        return engine_for(url)
    return create_engine(url, isolation_level="AUTOCOMMIT", pool_size=8, max_overflow=8)


def get_engine() -> Engine:
    return engine_for(get_settings().resolved_database_url)


def get_read_engine() -> Engine:
    return read_engine_for(get_settings().resolved_database_url)


@lru_cache
def _session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=engine_for(url), expire_on_commit=False)


def new_session() -> Session:
    return _session_factory(get_settings().resolved_database_url)()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A unit of work for background code: commit on success, roll back on any error."""
    session = new_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_session() -> Iterator[Session]:
    """FastAPI dependency: one transaction per request, committed only if the handler succeeded."""
    with session_scope() as session:
        yield session


# --- work that must wait for the commit -----------------------------------------------------------------

def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Runs ``action`` once ``session``'s transaction has committed, and never if it rolls back: a job's
    message is sent only for a job row that exists, files are removed only once the rows naming them
    are gone, and nobody (a router, the reaper) has to commit by hand first."""
    session.info.setdefault("after_commit", []).append(action)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for action in session.info.pop("after_commit", []):
        try:
            action()
        except Exception:  # the commit stands; what follows it must not undo it, nor stop the others
            log.exception("work after commit failed")


@event.listens_for(Session, "after_rollback")
def _drop_after_rollback(session: Session) -> None:
    session.info.pop("after_commit", None)
