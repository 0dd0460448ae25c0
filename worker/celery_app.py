"""The worker's Celery application. Celery is only transport (app.jobs.queue): a message carries a job
id and nothing else; SQL holds the truth about the job. Only the worker imports this module."""

from __future__ import annotations

from celery import Celery

from app.config import get_settings
from app.jobs.queue import RUN_JOB, broker_options

settings = get_settings()
celery_app = Celery("finetune", include=["worker.job_runner"])
celery_app.conf.update(
    broker_options(settings),
    task_default_queue=settings.gpu_queue,
    task_routes={RUN_JOB: {"queue": settings.gpu_queue}},
    # A job message is acknowledged only once the job has ended, and given back if the worker dies,
    # so a crash never loses a job. The claim in SQL makes a second delivery harmless.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # A fresh child process per job: GPU memory and any leaked state go with it.
    worker_max_tasks_per_child=1,
    task_ignore_result=True,
    broker_connection_max_retries=None,  # a broker restart is waited out, never fatal to a worker
)
