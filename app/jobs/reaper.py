"""The reaper: jobs are never lost. A running job whose worker stopped renewing its lease is
re-queued (the next attempt resumes from its last checkpoint) or, past FT_MAX_ATTEMPTS losses,
failed with a reason. A queued job whose message may have been lost (a broker restart without
persistence) is sent again; a duplicate message is harmless, the claim in SQL decides."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select

from app.config import Settings
from app.db.engine import session_scope
from app.db.models import Job, now
from app.jobs import states
from app.jobs.lifecycle import transition
from app.jobs.queue import enqueue_after_commit

log = logging.getLogger(__name__)


def reap_once(settings: Settings) -> list[str]:
    """One pass; returns the ids of jobs sent to the broker again (after the pass's changes commit: a
    worker must find the row already queued)."""
    sent: list[str] = []
    moment = now()
    with session_scope() as session:
        lost = session.scalars(select(Job).where(Job.status == states.RUNNING, Job.lease_expires_at < moment)).all()
        for job in lost:
            if _give_back_or_fail(session, job, moment, settings):
                enqueue_after_commit(session, job.id, job.devices)
                sent.append(job.id)
        stale = session.scalars(select(Job).where(Job.status == states.QUEUED,
                                                  Job.enqueued_at < moment - settings.requeue_after_s)).all()
        for job in stale:
            job.enqueued_at = moment
            enqueue_after_commit(session, job.id, job.devices)
            sent.append(job.id)
    return sent


def _give_back_or_fail(session, job: Job, moment: int, settings: Settings) -> bool:
    """A job whose worker was lost: cancelled if that was asked, failed past FT_MAX_ATTEMPTS losses, else
    queued again (True: it needs a new turn)."""
    where = job.worker_id or "an unknown worker"
    # Evaluations share the job table and its lease; their events speak of what the client created.
    noun, resumes = (("Evaluation", "it will run again from the start") if job.kind == "evaluation"
                     else ("Job", "it will resume from its last checkpoint"))
    if job.cancel_requested:
        transition(session, job.id, states.RUNNING, states.CANCELLED,
                   f"{noun} cancelled (its worker {where} was lost).")
        return False
    if job.interruptions + 1 >= settings.max_attempts:
        error = {"code": "worker_lost",
                 "message": f"The worker running this {noun.lower()} stopped responding {job.interruptions + 1} times "
                            f"(last: {where}); it was not retried again. Check the workers' logs for "
                            f"crashes or the out-of-memory killer, then create the {noun.lower()} again."}
        transition(session, job.id, states.RUNNING, states.FAILED, f"{noun} failed: {error['message']}", level="error",
                   error=error, interruptions=job.interruptions + 1)
        return False
    return transition(session, job.id, states.RUNNING, states.QUEUED,
                      f"Worker {where} stopped responding; {noun.lower()} re-queued, {resumes}.",
                      level="warning", interruptions=job.interruptions + 1, worker_id=None, enqueued_at=moment,
                      data={"interruptions": job.interruptions + 1})


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
