"""The worker's Celery application. Celery is only transport (app.jobs.queue): a message carries a job
id and nothing else; SQL holds the truth about the job. Only the worker imports this module."""

from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_shutdown

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


@worker_init.connect
def _preload_training_libraries(**_) -> None:
    """Imports the training stack once, in the worker's main process before its pool forks: every job
    runs in a fresh child (above), which then starts with them loaded instead of importing them again
    (5 s per job on an idle 2-core machine, 15 s on a busy one). Importing initialises no CUDA, and
    the NVML check keeps availability probes from doing so, so the children can still use the GPUs."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401
    from transformers import Trainer  # noqa: F401  (transformers imports lazily: the Trainer's modules)
    from trl import DPOTrainer  # noqa: F401

    if torch.cuda.is_initialized():  # a fork would leave the children an unusable CUDA context
        logging.getLogger(__name__).warning("CUDA was initialised while preloading; jobs may fail to use the GPU.")


@worker_init.connect
def _serve_metrics(sender=None, **_) -> None:
    """FT_WORKER_METRICS_PORT: this worker's Prometheus endpoint, started before the pool forks (worker/metrics.py)."""
    if settings.worker_metrics_port:
        from worker import metrics

        metrics.serve(settings.worker_metrics_port, settings.worker_name or getattr(sender, "hostname", "") or "")


@worker_init.connect
def _check_trackers(**_) -> None:
    from worker.trackers import unavailable

    for name in unavailable(settings.integrations):
        logging.getLogger(__name__).error("FT_INTEGRATIONS lists %s but this worker has no %s package: jobs that log "
                                          "to it will fail. Install the 'trackers' extra.", name, name)


@worker_process_init.connect
def _metrics_in_pool_process(**_) -> None:
    from billiard.process import current_process

    from worker import metrics

    metrics.start_pool_process(getattr(current_process(), "index", None))


@worker_process_shutdown.connect
def _metrics_of_pool_process_end(**_) -> None:
    from worker import metrics

    metrics.end_pool_process()


@worker_shutdown.connect
def _remove_metrics_folder(**_) -> None:
    from worker import metrics

    metrics.remove_folder()
