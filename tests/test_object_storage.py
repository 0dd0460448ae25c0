"""Storage shared by machines (FT_STORAGE_URL): an fsspec store behind each machine's local cache.

The first tests drive the storage directly, on two stores: fsspec's ``file://`` on a folder of its
own, and S3 through s3fs against moto's S3 server (the S3 protocol over HTTP, in this process). Every
"machine" has a cache folder of its own. The last test runs the service as separate machines would: an
API and workers that share PostgreSQL, Redis and the store, and nothing on disk."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import time

import pytest

from app.storage import ObjectStorage
from tests.conftest import EXAMPLES, upload
from tests.support.live import LiveStack, postgres_database, redis_url
from tests.test_lifecycle import FAST_LEASES, LONG


@pytest.fixture(scope="session")
def s3_endpoint():
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class Store:
    """What is stored under a store URL, whichever the protocol."""

    def __init__(self, url: str):
        import fsspec

        self.fs, self.base = fsspec.core.url_to_fs(url, use_listings_cache=False)

    def read(self, key: str) -> bytes:
        return self.fs.cat_file(f"{self.base}/{key}")

    def has(self, key: str) -> bool:
        return self.fs.exists(f"{self.base}/{key}")

    def children(self, key: str) -> list[str]:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(f"{self.base}/{key}", detail=False))

    def files(self, key: str) -> list[str]:
        return self.fs.find(f"{self.base}/{key}") if self.fs.exists(f"{self.base}/{key}") else []


@pytest.fixture()
def s3_url(s3_endpoint, monkeypatch) -> str:
    """A fresh bucket on the S3 server; the credentials and endpoint are in the environment, where
    s3fs (and processes started from here) find them, as they would on a real deployment."""
    import uuid

    import boto3

    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", s3_endpoint)):
        monkeypatch.setenv(name, value)
    bucket = f"store-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/service"


@pytest.fixture(params=["file", "s3"])
def machines(request, tmp_path):
    url = (tmp_path / "store").as_uri() if request.param == "file" else request.getfixturevalue("s3_url")
    return ObjectStorage(tmp_path / "cache-a", url), ObjectStorage(tmp_path / "cache-b", url), Store(url)


def test_an_unusable_store_url_stops_the_process_with_a_clear_message():
    from pydantic import ValidationError

    from app.config import Settings

    with pytest.raises(ValidationError) as refused:
        Settings(storage_url="nope://bucket/prefix")
    assert "storage_url" in str(refused.value) and "Protocol not known: nope" in str(refused.value)
    assert Settings(storage_url="s3://bucket/prefix").storage_url == "s3://bucket/prefix"


def test_what_one_machine_writes_another_reads(machines, tmp_path):
    a, b, store = machines
    a.check()
    blob = asyncio.run(a.save_upload("files/p/file-1", io.BytesIO(b"text,label\nhi,1\n"), max_bytes=1000))
    assert blob.bytes == 16 and store.read("files/p/file-1") == b"text,label\nhi,1\n"
    assert not (tmp_path / "cache-b" / "files/p/file-1").exists()
    assert b.local_path("files/p/file-1").read_bytes() == b"text,label\nhi,1\n"  # downloaded on first read

    model = tmp_path / "trained"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"w" * 10)
    assert a.import_dir("models/p/job-1", model) == 12
    copy = b.local_path("models/p/job-1")
    assert (copy / "config.json").read_text() == "{}" and (copy / "sub" / "weights.bin").read_bytes() == b"w" * 10
    assert not list(copy.parent.glob(".*part"))  # no half copies left behind

    a.delete("models/p/job-1")
    assert not b.exists("models/p/job-1") and not store.files("models/p/job-1")
    assert not b.local_path("files/p/missing").exists()  # nothing stored: nothing to read, no error


def test_an_upload_over_the_limit_leaves_nothing_anywhere(machines, tmp_path):
    from app.storage import TooLarge

    a, _, store = machines
    with pytest.raises(TooLarge):
        asyncio.run(a.save_upload("files/p/big", io.BytesIO(b"x" * 5000), max_bytes=1000))
    assert not store.has("files/p/big") and not (tmp_path / "cache-a" / "files/p/big").exists()


def test_checkpoints_are_mirrored_between_attempts_on_different_machines(machines):
    a, b, store = machines
    folder = a.pull("checkpoints/p/job")  # nothing stored yet: an empty folder to train into
    for step in (10, 20, 30):
        (folder / f"checkpoint-{step}").mkdir()
        (folder / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"m")
        (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        a.push("checkpoints/p/job", f"checkpoint-{step}", last="trainer_state.json")
    # The Trainer rotates the oldest away; the store forgets it with the next push.
    for f in (folder / "checkpoint-10").iterdir():
        f.unlink()
    (folder / "checkpoint-10").rmdir()
    (folder / "checkpoint-40").mkdir()
    (folder / "checkpoint-40" / "trainer_state.json").write_text("{}")
    a.push("checkpoints/p/job", "checkpoint-40", last="trainer_state.json")
    assert store.children("checkpoints/p/job") == ["checkpoint-20", "checkpoint-30", "checkpoint-40"]
    assert not a.exists("checkpoints/p/job/checkpoint-10") and a.exists("checkpoints/p/job/checkpoint-20")

    # The next attempt, on machine b, starts from what is stored; a stale folder b kept is dropped.
    stale = b.pull("checkpoints/p/job") / "checkpoint-5"  # as if left by a crash on b
    stale.mkdir()
    resumed = b.pull("checkpoints/p/job")
    assert sorted(p.name for p in resumed.iterdir()) == ["checkpoint-20", "checkpoint-30", "checkpoint-40"]
    assert json.loads((resumed / "checkpoint-30" / "trainer_state.json").read_text()) == {"global_step": 30}


def test_the_cache_keeps_to_its_budget_least_recently_used_first(tmp_path):
    url = (tmp_path / "store").as_uri()
    machine = ObjectStorage(tmp_path / "cache", url, cache_bytes=250)
    for name in ("a", "b", "c"):
        machine.write_bytes(f"files/p/{name}", name.encode() * 100)
    cached = tmp_path / "cache" / "files" / "p"
    assert sorted(p.name for p in cached.iterdir()) == ["a", "b", "c"]  # all just used: none evicted yet
    for age, name in ((3000, "a"), (2000, "b"), (1000, "c")):  # as if used that many seconds ago
        past = time.time() - age
        os.utime(cached / name, (past, past))
    machine.local_path("files/p/a")  # a read: "a" is the most recently used now
    folder = machine.pull("checkpoints/p/job")  # what training writes lives apart, out of reach
    (folder / "checkpoint-1").mkdir()
    (folder / "checkpoint-1" / "trainer_state.json").write_text("x" * 1000)
    machine.write_bytes("files/p/d", b"d" * 100)
    assert sorted(p.name for p in cached.iterdir()) == ["a", "d"] and (folder / "checkpoint-1").exists()
    assert machine.local_path("files/p/b").read_bytes() == b"b" * 100  # evicted here, still stored
    machine.release("checkpoints/p/job")
    assert not folder.exists()


def test_jobs_train_and_serve_across_machines_that_share_only_the_store(base_models_dir, tmp_path, s3_url):
    """API on one machine, a worker on another, killed mid-job, and a third worker resuming from the
    checkpoint the second stored in S3: each with a data folder of its own."""
    store = Store(s3_url)
    (tmp_path / "api").mkdir()
    with postgres_database() as db_url:
        stack = LiveStack(tmp_path / "api", base_models_dir, database_url=db_url, broker_url=redis_url(),
                          embedded_worker=False, storage_url=s3_url, **FAST_LEASES)
        with stack.running():
            first = stack.start_worker(data_dir=tmp_path / "worker-1")
            with stack.client() as c:
                train = upload(c, EXAMPLES / "sentiment.csv").json()["id"]
                job = c.post("/v1/fine_tuning/jobs", json={
                    "model": "tiny/bert", "training_file": train, "seed": 3,
                    "hyperparameters": {**LONG, "n_epochs": 12}}).json()  # 600 steps, a checkpoint every 200
                stack.wait_for_job(job["id"], until=lambda j: len(c.get(
                    f"/v1/fine_tuning/jobs/{j['id']}/checkpoints").json()["data"]) >= 1, timeout=300)
                stack.kill_worker(first)
                shutil.rmtree(tmp_path / "worker-1")  # the worker's whole machine is gone, its disk too
                stack.start_worker(data_dir=tmp_path / "worker-2")
                done = stack.wait_for_job(job["id"], timeout=600)
                assert done["status"] == "succeeded", (done, stack.log()[-3000:])
                messages = [e["message"] for e in stack.events(job["id"])]
                assert any("Resuming from checkpoint checkpoint-" in m for m in messages), messages
                # The API machine serves the model and a checkpoint it never had on its disk.
                assert not (tmp_path / "api" / "data" / "storage" / "models").exists()
                answer = c.post(f"/v1/models/{done['fine_tuned_model']}/predict", json={"inputs": "a great film"})
                assert answer.status_code == 200, answer.text
                assert {entry["label"] for entry in answer.json()[0]} == {"positive", "negative"}
                checkpoint = c.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"][0]
                assert c.post(f"/v1/models/{checkpoint['fine_tuned_model_checkpoint']}/predict",
                              json={"inputs": "a dull film"}).status_code == 200
                metrics_csv = c.get(f"/v1/files/{done['result_files'][0]}/content")
                assert metrics_csv.status_code == 200 and metrics_csv.text.startswith("step")
                assert c.get("/readyz").json()["checks"]["storage"] == "ok"
                deleted = c.delete(f"/v1/models/{done['fine_tuned_model']}")
                assert deleted.status_code == 200, deleted.text
                # The model's checkpoints go with it: each was servable and downloadable on its own.
                assert store.files("models") == [] and store.files("checkpoints") == []
