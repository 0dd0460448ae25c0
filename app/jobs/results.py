"""What a job produced besides its model: the per-step metrics series (from its metrics events), and that
series as a CSV result file, listed in the job's ``result_files`` and downloadable like any file
(``GET /v1/files/{id}/content``), as OpenAI does."""

from __future__ import annotations

import csv
import hashlib
import io

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import File, Job, JobEvent
from app.ids import new_id
from app.jobs.naming import file_key
from app.storage import Storage

LEADING = ["step", "epoch", "train_loss", "learning_rate", "samples_per_second", "tokens_per_second"]


def metrics_series(session: Session, job: Job) -> list[dict[str, Any]]:
    """The job's per-step metrics, oldest first: training logs and evaluations, merged by step."""
    rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.type == "metrics")
                           .order_by(JobEvent.seq))
    by_step: dict[int, dict[str, Any]] = {}
    for event in rows:
        data = event.data or {}
        point = by_step.setdefault(int(data.get("step", 0)), {"step": int(data.get("step", 0))})
        point.update({k: v for k, v in data.items() if isinstance(v, (int, float)) and k != "step"})
    return [by_step[k] for k in sorted(by_step)]


def write_metrics_csv(session: Session, storage: Storage, job: Job) -> File:
    series = metrics_series(session, job)
    keys = {k for point in series for k in point}
    columns = [k for k in LEADING if k in keys] + sorted(keys - set(LEADING))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or ["step"])
    writer.writeheader()
    writer.writerows(series)
    content = buffer.getvalue().encode()
    file_id = new_id("file")
    key = file_key(job.project_id, file_id)
    storage.write_bytes(key, content)
    record = File(id=file_id, project_id=job.project_id, filename=f"{job.id}_metrics.csv",
                  purpose="fine-tune-results", bytes=len(content), sha256=hashlib.sha256(content).hexdigest(),
                  format="csv", rows=len(series), columns=columns, profile={},
                  validation={"errors": [], "warnings": []}, status="processed", storage_key=key)
    session.add(record)
    session.flush()
    return record
