"""What a job produced besides its model: the per-step metrics series (from its metrics events), that
series as a CSV result file, and its TensorBoard event files as a .tar.gz result file — each listed in the
job's ``result_files`` and downloadable like any file (``GET /v1/files/{id}/content``), as OpenAI does."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import tarfile
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import File, Job, JobEvent
from app.ids import new_id
from app.jobs.naming import file_key
from app.storage import Storage

log = logging.getLogger(__name__)

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
    return _result_file(session, storage, job, f"{job.id}_metrics.csv", buffer.getvalue().encode(), "csv",
                        rows=len(series), columns=columns)


# The folder of TensorBoard event files, beside a job's checkpoints (kept across attempts).
TENSORBOARD_FOLDER = "tensorboard"
# Event files hold a few scalars a logged step: a job's are kilobytes to a few megabytes. Past this
# something is wrong, and the job keeps its model without them.
MAX_TENSORBOARD_BYTES = 64 * 2**20


def write_tensorboard_archive(session: Session, storage: Storage, job: Job, folder: Path) -> File | None:
    """The job's event files as ``<job id>_tensorboard.tar.gz``, one folder named after the job inside, so
    that ``tensorboard --logdir`` on what was unpacked shows the job as a run. None when there are none."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    size = sum(p.stat().st_size for p in files)
    if not files or size > MAX_TENSORBOARD_BYTES:
        if files:
            log.warning("job %s: %d bytes of TensorBoard events, over %d; not kept", job.id, size,
                        MAX_TENSORBOARD_BYTES)
        return None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in files:
            archive.add(path, arcname=f"{job.id}/{path.relative_to(folder).as_posix()}", recursive=False)
    return _result_file(session, storage, job, f"{job.id}_tensorboard.tar.gz", buffer.getvalue(), None,
                        rows=0, columns=[])


def _result_file(session: Session, storage: Storage, job: Job, filename: str, content: bytes, format: str | None,
                 rows: int, columns: list[str]) -> File:
    file_id = new_id("file")
    key = file_key(job.project_id, file_id)
    storage.write_bytes(key, content)
    record = File(id=file_id, project_id=job.project_id, filename=filename, purpose="fine-tune-results",
                  bytes=len(content), sha256=hashlib.sha256(content).hexdigest(), format=format, rows=rows,
                  columns=columns, profile={}, validation={"errors": [], "warnings": []}, status="processed",
                  storage_key=key)
    session.add(record)
    session.flush()
    return record
