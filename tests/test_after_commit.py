"""Work that must wait for a commit (a job's message to the queue, removing files whose rows were deleted,
forgetting a revoked key) runs once the transaction commits, and never when it rolls back."""

from __future__ import annotations

from sqlalchemy import text

from app.db.engine import after_commit, new_session


def test_work_runs_after_the_commit_and_never_after_a_rollback(app):
    ran: list[str] = []
    committed = new_session()
    committed.execute(text("SELECT 1"))
    after_commit(committed, lambda: ran.append("committed"))
    assert ran == []  # nothing before the commit
    committed.commit()
    assert ran == ["committed"]

    rolled_back = new_session()
    rolled_back.execute(text("SELECT 1"))
    after_commit(rolled_back, lambda: ran.append("rolled back"))
    rolled_back.rollback()
    rolled_back.commit()  # a later commit of the same session does not revive what the rollback dropped
    assert ran == ["committed"]


def test_failing_work_neither_undoes_the_commit_nor_stops_the_rest(app):
    ran: list[str] = []
    session = new_session()
    session.execute(text("SELECT 1"))
    after_commit(session, lambda: 1 / 0)
    after_commit(session, lambda: ran.append("second"))
    session.commit()
    assert ran == ["second"]
