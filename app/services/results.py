"""Result files of a finished job: the metrics series as CSV, listed in the job's ``result_files`` and
downloadable like any file (``GET /v1/files/{id}/content``), as OpenAI does."""

from __future__ import annotations

import csv
import hashlib
import io

from sqlalchemy.orm import Session

from app.db.models import File, Job
from app.ids import new_id
from app.services.jobs import metrics_series
from app.storage import LocalStorage

LEADING = ["step", "epoch", "train_loss", "learning_rate", "samples_per_second", "tokens_per_second"]


def write_metrics_csv(session: Session, storage: LocalStorage, job: Job) -> File:
    series = metrics_series(session, job)
    keys = {k for point in series for k in point}
    columns = [k for k in LEADING if k in keys] + sorted(keys - set(LEADING))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or ["step"])
    writer.writeheader()
    writer.writerows(series)
    content = buffer.getvalue().encode()
    file_id = new_id("file")
    key = f"files/{job.project_id}/{file_id}"
    storage.write_bytes(key, content)
    record = File(id=file_id, project_id=job.project_id, filename=f"{job.id}_metrics.csv",
                  purpose="fine-tune-results", bytes=len(content), sha256=hashlib.sha256(content).hexdigest(),
                  format="csv", rows=len(series), columns=columns, profile={}, validation={"errors": [], "warnings": []},
                  status="processed", storage_key=key)
    session.add(record)
    session.flush()
    return record
