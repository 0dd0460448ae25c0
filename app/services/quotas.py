"""Per-project quotas: how much of the service one tenant may hold or use at once, so that no project
can crowd out the others. Defaults come from settings (``FT_QUOTA_*``); an operator overrides them per
project with ``finetune quota set``. Going over a quota answers 429 ``rate_limit_exceeded`` with
``Retry-After``, before any of the work the request asks for is done.

Counts that live in SQL (jobs, files, bytes, keys) hold across API replicas; open event streams and
the request rate are counted per API process (N replicas behind a load balancer allow N times as many)."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.jobs import states
from app.db.models import File, FineTunedModel, Job
from app.errors import over_quota
from app.services.keys import ProjectRef

# name → what it counts (for messages and `finetune quota show`)
QUOTAS: dict[str, str] = {
    "active_jobs": "queued, running or paused jobs",
    "storage_bytes": "bytes of stored files and fine-tuned models",
    "files": "uploaded files",
    "webhook_endpoints": "webhook endpoints",
    "event_streams": "open job event streams (per API process)",
    "requests_per_s": "prediction and completion requests per second (per API process; 0: unlimited)",
    "api_keys": "active API keys",
}
ACTIVE = (states.VALIDATING, states.QUEUED, states.RUNNING, states.PAUSED)
HOW_TO_RAISE = "The operator can raise it (`finetune quota set`)."


def limit(project: ProjectRef, name: str, settings: Settings | None = None) -> float:
    """The project's limit: the operator's override, else the deployment's default."""
    override = (project.quotas or {}).get(name)
    return override if override is not None else getattr(settings or get_settings(), f"quota_{name}")


def check_override(name: str, value: Any) -> float:
    if name not in QUOTAS:
        raise ValueError(f"unknown quota '{name}'; the quotas are: {', '.join(QUOTAS)}")
    number = float(value)
    if number < 0 or not math.isfinite(number):
        raise ValueError(f"quota {name} must be a number ≥ 0 (got {value})")
    return number if name == "requests_per_s" else int(number)


def check_active_jobs(session: Session, project: ProjectRef) -> None:
    allowed = limit(project, "active_jobs")
    active = session.scalar(select(func.count(Job.id)).where(Job.project_id == project.id, Job.status.in_(ACTIVE)))
    if active >= allowed:
        raise over_quota(f"This project has {active} active jobs (queued, running or paused), its limit of "
                         f"{allowed:g}. Wait for one to finish, or cancel one, and try again. {HOW_TO_RAISE}")


def stored_bytes(session: Session, project_id: str) -> int:
    files = session.scalar(select(func.coalesce(func.sum(File.bytes), 0)).where(File.project_id == project_id))
    models = session.scalar(select(func.coalesce(func.sum(FineTunedModel.bytes), 0))
                            .where(FineTunedModel.project_id == project_id))
    return int(files) + int(models)


def upload_allowance(session: Session, project: ProjectRef) -> int:
    """Bytes the next upload may hold within the project's storage quota; raises when the project is
    at its file count or storage limit."""
    files = session.scalar(select(func.count(File.id)).where(File.project_id == project.id,
                                                             File.purpose == "fine-tune"))
    if files >= limit(project, "files"):
        raise over_quota(f"This project has {files} files, its limit of {limit(project, 'files'):g}. Delete files "
                         f"it no longer needs (DELETE /v1/files/{{id}}). {HOW_TO_RAISE}", "file")
    left = int(limit(project, "storage_bytes")) - stored_bytes(session, project.id)
    if left <= 0:
        raise storage_exceeded(project)
    return left


def storage_exceeded(project: ProjectRef) -> Exception:
    return over_quota(f"This project's files and models take its whole storage quota of "
                      f"{limit(project, 'storage_bytes'):g} bytes. Delete files or models it no longer needs. "
                      f"{HOW_TO_RAISE}", "file")


def check_api_keys(session: Session, project: ProjectRef) -> None:
    from app.services.keys import active_keys

    if active_keys(session, project.id) >= limit(project, "api_keys"):
        raise over_quota(f"This project has {limit(project, 'api_keys'):g} active API keys, its limit. Revoke keys "
                         f"it no longer uses (DELETE /v1/keys/{{id}}). {HOW_TO_RAISE}")


class StreamSlots:
    """Open job event streams per project, in this process."""

    def __init__(self):
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, project: ProjectRef) -> "StreamSlot":
        allowed = limit(project, "event_streams")
        with self._lock:
            if self._open.get(project.id, 0) >= allowed:
                raise over_quota(f"This project has {allowed:g} event streams open, its limit. Close one (or poll "
                                 f"GET …/events?after=…) and try again. {HOW_TO_RAISE}", retry_after_s=10)
            self._open[project.id] = self._open.get(project.id, 0) + 1
        return StreamSlot(self, project.id)

    def _release(self, project_id: str) -> None:
        with self._lock:
            self._open[project_id] -= 1
            if not self._open[project_id]:
                del self._open[project_id]

    def open(self, project_id: str) -> int:
        with self._lock:
            return self._open.get(project_id, 0)


class StreamSlot:
    """One open stream; released when the stream ends (or, if it never started, when it is dropped)."""

    def __init__(self, slots: StreamSlots, project_id: str):
        self._slots, self._project_id, self._held = slots, project_id, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._release(self._project_id)

    __del__ = release


class RequestRate:
    """Prediction and completion requests per project: a token bucket refilled at the project's
    ``requests_per_s``, holding at most two seconds' worth (the burst)."""

    BURST_S = 2.0

    def __init__(self):
        self._buckets: dict[str, tuple[float, float]] = {}  # project id → (tokens, when counted)
        self._lock = threading.Lock()

    def take(self, project: ProjectRef) -> None:
        rate = limit(project, "requests_per_s")
        if not rate:
            return
        capacity = max(1.0, rate * self.BURST_S)
        moment = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(project.id, (capacity, moment))
            tokens = min(capacity, tokens + (moment - then) * rate)
            if tokens < 1:
                self._buckets[project.id] = (tokens, moment)
                wait = (1 - tokens) / rate
                error = over_quota(f"This project sends more than {rate:g} prediction and completion requests per "
                                   f"second, its limit. Retry after {wait:.2f} s. {HOW_TO_RAISE}", retry_after_s=wait)
                error.headers.update({"x-ratelimit-limit-requests": f"{rate:g}",
                                      "x-ratelimit-remaining-requests": "0",
                                      "x-ratelimit-reset-requests": f"{wait:.3f}s"})
                raise error
            self._buckets[project.id] = (tokens - 1, moment)
