"""Celery configuration. Celery is only transport: a message carries a job id and nothing else;
SQL holds the truth about the job. This module stays light so that the API can import it to enqueue."""

from __future__ import annotations

from celery import Celery

from app.config import get_settings

settings = get_settings()
if settings.resolved_broker_url.startswith("sqla+sqlite"):
    settings.data_dir.mkdir(parents=True, exist_ok=True)


def job_queue(base: str, devices: int) -> str:
    """The queue of jobs asking for ``devices`` GPUs: ``base`` for one, ``base-xN`` for N, so that a job
    is only ever taken by a worker that has the GPUs it asks for."""
    return base if devices <= 1 else f"{base}-x{devices}"


def worker_queues(base: str, devices: int) -> list[str]:
    """What a worker offering ``devices`` GPUs consumes: jobs of one GPU up to jobs of all of them."""
    return [job_queue(base, n) for n in range(1, devices + 1)]


celery_app = Celery("finetune", broker=settings.resolved_broker_url, include=["worker.tasks"])
celery_app.conf.update(
    task_default_queue=settings.gpu_queue,
    task_routes={"worker.tasks.run_job": {"queue": settings.gpu_queue}},
    # A job message is acknowledged only once the job has ended, and given back if the worker dies,
    # so a crash never loses a job. The claim in SQL makes a second delivery harmless.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # A fresh child process per job: GPU memory and any leaked state go with it.
    worker_max_tasks_per_child=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,  # a broker restart is waited out, never fatal to a worker
)

if settings.resolved_broker_url.startswith(("redis://", "rediss://")):
    # Redis redelivers an unacknowledged message after the visibility timeout, even to a live worker
    # still training: make it longer than any job. Lost workers are found by their lease instead.
    # (Other transports take no such option; the SQLAlchemy one would pass it to create_engine.)
    celery_app.conf.broker_transport_options = {"visibility_timeout": 30 * 24 * 3600}
