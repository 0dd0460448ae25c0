"""The worker's Prometheus endpoint (FT_WORKER_METRICS_PORT): how long jobs waited and ran, and the GPU
memory of its training processes, observed where they happen.

A Celery worker runs each job in a fresh pool process that exits when the job ends
(worker_max_tasks_per_child=1), so what that process counted in memory would die with it. prometheus_client's
multiprocess mode keeps each process's values in a file of a folder the main process serves. The files
are named after the pool slot (``pool1``; ``pool1-rank0``… for the processes of a multi-device job), not
the process id: the next job in a slot carries on its counts, so the folder holds a few files however
many jobs ran, and a scrape reads only those.

Only processes that call :func:`configure_process` write there: the folder travels in an environment
variable of this module's own, and prometheus_client's is set in a process only once it is configured,
so helper processes (data loaders, chat-template sandboxes) never leave files behind."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time

from transformers import TrainerCallback

from app.observability import GPU_MEMORY, JOB_DURATION, QUEUE_WAIT, WORKER_SERIES

log = logging.getLogger(__name__)

FOLDER_ENV = "FINETUNE_WORKER_METRICS_DIR"  # set by the main process for its pool processes
SLOT_ENV = "FINETUNE_WORKER_METRICS_SLOT"  # the pool slot of this process (and of the ones it launches)
NAME_ENV = "FINETUNE_WORKER_NAME"  # the `worker` label
PROMETHEUS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The path of the callback below, for a job's spec (FT_TRAINER_CALLBACKS style: it travels to every process).
GPU_MEMORY_CALLBACK = "worker.metrics:GpuMemoryCallback"
SAMPLE_EVERY_S = 2.0


def serve(port: int, worker_name: str) -> str | None:
    """In the worker's main process, before its pool starts: the endpoint on ``port``, serving the files of a
    fresh folder (returned; None if the port cannot be had: the worker then runs without metrics)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    folder = tempfile.mkdtemp(prefix="finetune-worker-metrics-")
    registry = CollectorRegistry()
    registry.register(_WorkerSeries(MultiProcessCollector(None, path=folder)))
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        log.error("FT_WORKER_METRICS_PORT %s cannot be used (%s): this worker serves no metrics. Give each worker "
                  "process on a machine a port of its own.", port, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    os.environ[FOLDER_ENV] = folder
    os.environ[NAME_ENV] = worker_name
    log.info("worker metrics on :%s/metrics", port)
    return folder


class _WorkerSeries:
    """The worker's own families from the folder (a pool process may also hold the API's series, unused)."""

    def __init__(self, collector):
        self.collector = collector

    def collect(self):
        return [family for family in self.collector.collect() if family.name in WORKER_SERIES]


def configure_process(slot: str | None = None) -> bool:
    """Makes this process's metric values files of the folder, named after its slot; False (nothing
    changed) when the worker serves no metrics. Idempotent."""
    folder = os.environ.get(FOLDER_ENV)
    if not folder:
        return False
    from prometheus_client import values

    if slot is not None:
        os.environ[SLOT_ENV] = slot
    os.environ[PROMETHEUS_ENV] = folder
    if not getattr(values.ValueClass, "finetune_slots", False):
        value_class = values.MultiProcessValue(process_identifier=_identity)
        value_class.finetune_slots = True
        values.ValueClass = value_class
    return True


def _identity() -> str:
    slot = os.environ.get(SLOT_ENV) or f"pid{os.getpid()}"
    rank = os.environ.get("RANK")  # a process of a multi-device job (accelerate launch)
    return f"{slot}-rank{rank}" if rank is not None else slot


def start_pool_process(index: int | None) -> None:
    """A pool process starts: its slot's GPU memory, left by the one before it (maybe killed), is gone."""
    if configure_process(f"pool{index if index is not None else os.getpid()}"):
        forget_gpu_memory(_identity())
        forget_gpu_memory(f"{_identity()}-rank*")


def end_pool_process() -> None:
    """A pool process exits: its GPU memory is freed, so its series go too."""
    if enabled():
        forget_gpu_memory(_identity())


def forget_gpu_memory(identity: str) -> None:
    """The GPU memory series of processes that ended (a glob of identities)."""
    folder = os.environ.get(FOLDER_ENV)
    if folder:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(identity, folder)


def remove_folder() -> None:
    folder = os.environ.pop(FOLDER_ENV, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def enabled() -> bool:
    return bool(os.environ.get(FOLDER_ENV))


def job_claimed(kind: str, enqueued_at: int | None) -> None:
    if enqueued_at is not None:
        QUEUE_WAIT.labels(kind).observe(max(0.0, time.time() - enqueued_at))


def job_ended(kind: str, task: str, outcome: str, seconds: float) -> None:
    JOB_DURATION.labels(kind, task, outcome).observe(seconds)
    forget_gpu_memory(f"{_identity()}-rank*")  # a multi-device job's processes have exited


def worker_label() -> str:
    return os.environ.get(NAME_ENV) or socket.gethostname()


class GpuMemoryCallback(TrainerCallback):
    """Samples this training process's GPU memory (torch's allocator) at most every few seconds while it
    trains; nothing on CPU. Added to a job's callbacks by the job runner when the worker serves metrics."""

    def __init__(self):
        self.active = configure_process()
        self._last = 0.0

    def _sample(self, args, force: bool = False) -> None:
        now = time.monotonic()
        if not self.active or args.device.type != "cuda" or (not force and now - self._last < SAMPLE_EVERY_S):
            return
        import torch

        self._last = now
        index = args.device.index if args.device.index is not None else torch.cuda.current_device()
        labels = (worker_label(), str(index))
        GPU_MEMORY.labels(*labels, "allocated").set(torch.cuda.memory_allocated(index))
        GPU_MEMORY.labels(*labels, "reserved").set(torch.cuda.memory_reserved(index))
        GPU_MEMORY.labels(*labels, "peak").set(torch.cuda.max_memory_allocated(index))

    def on_step_end(self, args, state, control, **kwargs):
        self._sample(args)

    def on_evaluate(self, args, state, control, **kwargs):
        self._sample(args, force=True)

    def on_train_end(self, args, state, control, **kwargs):
        self._sample(args, force=True)
