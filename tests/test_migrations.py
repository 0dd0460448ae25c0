"""Migrations build every schema: upgrade → the models match it (autogenerate finds nothing) → downgrade."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.db.migrate import downgrade, upgrade
from app.db.models import Base
from tests.support.live import postgres_database


def _round_trip(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
        assert {"files", "fine_tuning_jobs", "fine_tuning_job_events", "fine_tuned_models"} <= set(
            inspect(engine).get_table_names())
        downgrade(url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()


def test_sqlite_round_trip(tmp_path):
    _round_trip(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_postgres_round_trip():
    with postgres_database() as url:
        _round_trip(url)


@pytest.mark.parametrize("revision", ["head"])
def test_upgrade_is_idempotent(tmp_path, revision):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url, revision)
    upgrade(url, revision)
