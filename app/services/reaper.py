"""The reaper: jobs are never lost. A running job whose worker stopped renewing its lease is
re-queued (the next attempt resumes from its last checkpoint) or, past FT_MAX_ATTEMPTS losses,
failed with a reason. A queued job whose message may have been lost (a broker restart without
persistence) is sent again; a duplicate message is harmless, the claim in SQL decides."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select

from app.config import Settings
from app.db import transitions as st
from app.db.engine import session_scope
from app.db.models import Job, now
from app.services.lifecycle import transition

log = logging.getLogger(__name__)


def reap_once(settings: Settings) -> list[str]:
    """One pass; returns the ids of jobs sent to the broker again."""
    from app.services.jobs import enqueue

    to_send: list[tuple[str, int]] = []  # job id, devices
    moment = now()
    with session_scope() as s:
        lost = s.scalars(select(Job).where(Job.status == st.RUNNING, Job.lease_expires_at < moment)).all()
        for job in lost:
            where = job.worker_id or "an unknown worker"
            if job.cancel_requested:
                transition(s, job.id, st.RUNNING, st.CANCELLED, f"Job cancelled (its worker {where} was lost).")
            elif job.interruptions + 1 >= settings.max_attempts:
                error = {"code": "worker_lost",
                         "message": f"The worker running this job stopped responding {job.interruptions + 1} times "
                                    f"(last: {where}); it was not retried again. Check the workers' logs for "
                                    "crashes or the out-of-memory killer, then create the job again."}
                transition(s, job.id, st.RUNNING, st.FAILED, f"Job failed: {error['message']}", level="error",
                           error=error, interruptions=job.interruptions + 1)
            elif transition(s, job.id, st.RUNNING, st.QUEUED,
                            f"Worker {where} stopped responding; job re-queued, it will resume from its last "
                            "checkpoint.", level="warning", interruptions=job.interruptions + 1, worker_id=None,
                            enqueued_at=moment, data={"interruptions": job.interruptions + 1}):
                to_send.append((job.id, job.devices))
        stale = s.scalars(select(Job).where(Job.status == st.QUEUED,
                                            Job.enqueued_at < moment - settings.requeue_after_s)).all()
        for job in stale:
            job.enqueued_at = moment
            to_send.append((job.id, job.devices))
    for job_id, devices in to_send:  # after commit: a worker must find the row already queued
        enqueue(settings, job_id, devices)
    return [job_id for job_id, _ in to_send]


class Reaper:
    """A daemon thread running reap_once every FT_REAPER_INTERVAL_S. Safe to run in every API replica:
    each change is a conditional UPDATE, so two reapers never both act on one job."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.reaper_interval_s):
            try:
                requeued = reap_once(self.settings)
                if requeued:
                    log.warning("re-sent jobs to the broker: %s", ", ".join(requeued))
            except Exception:  # the loop must outlive a database hiccup
                log.exception("reaper pass failed")
