"""The queue a job's turns travel on. Celery is only transport: a message carries a job id and says "a job
of this many devices was queued"; SQL holds the truth about the job, and the worker that takes a message
runs the queued job the scheduler names (app.jobs.scheduling).

This module is the one way to the broker from the API, the reaper and the CLI: queue names, sending a
turn after the job's row commits, and a reachability check for /readyz. The worker
(worker/celery_app.py) consumes with the same broker options; neither side imports the other."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.engine import after_commit

log = logging.getLogger(__name__)

RUN_JOB = "finetune.run_job"  # the Celery task a message asks for (worker/job_runner.py)


def job_queue(base: str, devices: int) -> str:
    """The queue of jobs asking for ``devices`` GPUs: ``base`` for one, ``base-xN`` for N, so that a job
    is only ever taken by a worker that has the GPUs it asks for."""
    return base if devices <= 1 else f"{base}-x{devices}"


def worker_queues(base: str, devices: int) -> list[str]:
    """What a worker offering ``devices`` GPUs consumes: jobs of one GPU up to jobs of all of them."""
    return [job_queue(base, n) for n in range(1, devices + 1)]


def broker_options(settings: Settings) -> dict[str, Any]:
    """Celery settings both ends need: where the broker is and how to keep it."""
    if settings.resolved_broker_url.startswith("sqla+sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"broker_url": settings.resolved_broker_url,
                               "broker_connection_retry_on_startup": True}
    if settings.resolved_broker_url.startswith(("redis://", "rediss://")):
        # Redis redelivers an unacknowledged message after the visibility timeout, even to a live worker
        # still training: make it longer than any job. Lost workers are found by their lease instead.
        # (Other transports take no such option; the SQLAlchemy one would pass it to create_engine.)
        options["broker_transport_options"] = {"visibility_timeout": 30 * 24 * 3600}
    return options


@lru_cache
def _producer():
    from celery import Celery

    app = Celery("finetune-producer")
    app.conf.update(broker_options(get_settings()))
    return app


def enqueue(job_id: str, devices: int = 1) -> None:
    """Sends the job's turn to the queue of workers with ``devices`` GPUs. A broker that cannot be reached
    is logged, not raised: the row stays queued (the truth), and the reaper sends it again later."""
    try:
        _producer().send_task(RUN_JOB, args=[job_id], queue=job_queue(get_settings().gpu_queue, devices))
    except Exception:
        log.exception("could not enqueue job %s", job_id)


def enqueue_after_commit(session: Session, job_id: str, devices: int = 1) -> None:
    """The job's turn, sent once the transaction that queued it commits (never if it rolls back)."""
    after_commit(session, lambda: enqueue(job_id, devices))


def ping() -> None:
    """Raises if the broker cannot be reached (readiness probe)."""
    with _producer().connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=3)
