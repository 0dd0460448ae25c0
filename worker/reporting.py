"""The training core reports through a Reporter (worker/callbacks.py); here, the one that writes to SQL:
progress, events, resolved hyperparameters and checkpoints, and the cancel/pause flags read back. And
the heartbeat that keeps a running job's lease while it trains."""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import select

from app.db.engine import session_scope
from app.db.models import Checkpoint, Job, now
from app.ids import new_id
from app.jobs import improvement, naming
from app.jobs.events import append_event
from app.jobs.method import method_object, method_type
from app.jobs.results import TENSORBOARD_FOLDER
from app.jobs.scheduling import renew_lease
from app.storage import get_storage

log = logging.getLogger(__name__)


class DatabaseReporter:
    """Progress, events, checkpoints and the cancel/pause flags, through SQL."""

    def __init__(self, job: Job, checkpoints_prefix: str):
        self.job_id, self.project_id = job.id, job.project_id
        self.model_id = naming.fine_tuned_model_id(job.model, job.suffix, job.id)
        self.checkpoints_prefix = checkpoints_prefix

    def progress(self, progress: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
        with session_scope() as session:
            job = session.get(Job, self.job_id)
            job.progress = progress
            if progress.get("eta_seconds") is not None:
                job.estimated_finish = now() + int(progress["eta_seconds"])
            if metrics:
                job.metrics = {**(job.metrics or {}), **metrics}

    def event(self, message: str, *, level: str = "info", type: str = "message",
              data: dict[str, Any] | None = None) -> None:
        with session_scope() as session:
            append_event(session, self.job_id, message, level=level, type=type, data=data)

    def should_stop(self) -> str | None:
        with session_scope() as session:
            cancel, pause = session.execute(select(Job.cancel_requested, Job.pause_requested)
                                            .where(Job.id == self.job_id)).one()
        return "cancel" if cancel else "pause" if pause else None

    def hyperparameters(self, resolved: dict[str, Any]) -> None:
        with session_scope() as session:
            job = session.get(Job, self.job_id)
            job.hyperparameters = resolved
            job.method = method_object(method_type(job.method), resolved)

    def baseline(self, metric: str, metrics: dict[str, float], note: str | None) -> None:
        stored = improvement.baseline(metric, metrics, note)
        with session_scope() as session:
            session.get(Job, self.job_id).baseline_metrics = stored
            value = metrics.get(metric)
            append_event(session, self.job_id, f"Before training: {improvement.label(metric)} "
                         + (f"{value:.4g}" if isinstance(value, (int, float)) else "not measured")
                         + (f". {note}" if note else "."), data={"before": stored})

    def checkpoint(self, step: int, epoch: float, path: str, metrics: dict[str, Any]) -> None:
        storage = get_storage()
        # Stored (trainer_state.json last: it marks a checkpoint complete) before anyone is told of it.
        storage.push(self.checkpoints_prefix, f"checkpoint-{step}", last="trainer_state.json")
        # The TensorBoard events so far go with it: an attempt on another machine adds to them.
        storage.push(self.checkpoints_prefix, TENSORBOARD_FOLDER)
        with session_scope() as session:
            # The Trainer rotated old checkpoints away before telling us: forget those too.
            for old in session.scalars(select(Checkpoint).where(Checkpoint.job_id == self.job_id)):
                if not storage.exists(old.storage_key):
                    session.delete(old)
            if session.scalar(select(Checkpoint.id).where(Checkpoint.job_id == self.job_id, Checkpoint.step == step)):
                return  # the same step saved again after a resume
            model_id = naming.checkpoint_model_id(self.model_id, step)
            session.add(Checkpoint(id=new_id("ftckpt"), job_id=self.job_id, project_id=self.project_id, step=step,
                                   epoch=epoch, metrics={"step": step, **metrics}, model_id=model_id,
                                   storage_key=naming.checkpoint_key(self.checkpoints_prefix, step)))
            append_event(session, self.job_id, f"Checkpoint saved at step {step}; usable for predictions as {model_id}.",
                         data={"step": step, "fine_tuned_model_checkpoint": model_id})


class Heartbeat:
    """Renews the job's lease from a thread, so that long evaluations or data loading never look
    like a dead worker, and a dead worker's lease runs out quickly."""

    def __init__(self, job_id: str, lease_seconds: int):
        self.job_id, self.lease_seconds = job_id, lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(max(0.5, self.lease_seconds / 4)):
            try:
                renew_lease(self.job_id, self.lease_seconds)
            except Exception:  # a missed beat is not fatal; the lease has slack for three more
                log.exception("heartbeat for %s failed", self.job_id)
