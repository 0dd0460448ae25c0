"""The database dropping every connection (a restart, a failover, a proxy's idle cut) costs the API no
failed request. Reads use a pool that is not pinged before each use (app.db.engine.read_engine_for):
a read that meets a dead connection runs once more on a new one. Writes use the pinged pool."""

from __future__ import annotations

import psycopg

from tests.support.live import LiveStack, postgres_database

EXAMPLES_CSV = b"text,label\n" + b"".join(f"sentence number {i},{'pos' if i % 2 else 'neg'}\n".encode()
                                         for i in range(40))


def _drop_every_connection(database_url: str) -> int:
    database = database_url.rsplit("/", 1)[1]
    with psycopg.connect("host=127.0.0.1 port=5432 user=root dbname=test", autocommit=True) as admin:
        return len(admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchall())


def test_reads_and_writes_answer_after_the_database_dropped_every_connection(base_models_dir, tmp_path):
    with postgres_database() as url:
        stack = LiveStack(tmp_path, base_models_dir, database_url=url, embedded_worker=False)
        with stack.running(), stack.client() as c:
            upload = c.post("/v1/files", files={"file": ("reviews.csv", EXAMPLES_CSV)}, data={"purpose": "fine-tune"})
            assert upload.status_code == 200, upload.text
            file_id = upload.json()["id"]
            job = c.post("/v1/fine_tuning/jobs", json={"model": "tiny/bert", "training_file": file_id})
            assert job.status_code == 200, job.text
            job_id = job.json()["id"]
            reads = [f"/v1/fine_tuning/jobs/{job_id}", "/v1/fine_tuning/jobs", f"/v1/files/{file_id}",
                     f"/v1/fine_tuning/jobs/{job_id}/events"]
            for _ in range(10):  # both pools hold warm connections, used a moment ago (no ping would be due)
                assert all(c.get(path).status_code == 200 for path in reads)

            assert _drop_every_connection(url) >= 2
            answers = {path: c.get(path) for path in reads}
            assert {path: a.status_code for path, a in answers.items()} == dict.fromkeys(reads, 200), \
                [a.text for a in answers.values()]
            assert answers[reads[0]].json()["id"] == job_id

            _drop_every_connection(url)
            cancelled = c.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert c.get(reads[0]).json()["status"] == "cancelled"
