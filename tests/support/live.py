"""Live stacks for end-to-end tests: the real `finetune serve` process (API + Celery worker) talking
to real databases and brokers. Nothing is mocked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.cli import die_with_parent

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "cancelled"}


def unavailable(reason: str):
    """Where CI runs, every service the tests need is started by .ci/run: missing means broken."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must provide it: see tests/start_services.sh)")
    pytest.skip(reason)


@contextmanager
def postgres_database():
    import psycopg

    admin = "host=127.0.0.1 port=5432 user=root dbname=test connect_timeout=3"
    name = f"ft_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc}")
    try:
        yield f"postgresql+psycopg://root@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_url(db: int = 9) -> str:
    import redis

    url = f"redis://127.0.0.1:6379/{db}"
    try:
        # No flush: each stack has a queue of its own, and a flush would empty another session's.
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.exceptions.ConnectionError as exc:
        unavailable(f"Redis is not reachable on 127.0.0.1:6379: {exc}")
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveStack:
    def __init__(self, root: Path, base_models_dir: Path, database_url: str | None = None,
                 broker_url: str | None = None, embedded_worker: bool = True, key: str | None = None,
                 **settings: str):
        self.root = root
        self.embedded_worker = embedded_worker
        self.workers: list[subprocess.Popen] = []
        self.port = free_port()
        self.key = key or f"sk-live-{uuid.uuid4().hex}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "serve.log"
        self.env = {**os.environ, "FT_DATA_DIR": str(root / "data"), "FT_BASE_MODELS_DIR": str(base_models_dir),
                    "FT_BOOTSTRAP_API_KEY": self.key, "FT_API_PORT": str(self.port),
                    "FT_PROGRESS_INTERVAL_S": "0.5", "FT_MAX_UPLOAD_BYTES": str(64 * 1024 * 1024),
                    "PYTHONUNBUFFERED": "1",
                    # A queue of its own: workers of other stacks on the same broker never take its jobs.
                    "FT_GPU_QUEUE": f"gpu-{uuid.uuid4().hex[:8]}",
                    # Workers take jobs of one or two processes (tests/test_distributed.py), whatever the cores.
                    "FT_WORKER_DEVICES": "2",
                    **{f"FT_{k.upper()}": str(v) for k, v in settings.items()}}
        for var, value in (("FT_DATABASE_URL", database_url), ("FT_BROKER_URL", broker_url)):
            if value:
                self.env[var] = value
            else:
                self.env.pop(var, None)
        self.process: subprocess.Popen | None = None

    @contextmanager
    def running(self):
        with open(self.log_path, "ab") as log:
            command = [sys.executable, "-m", "app.cli", "serve"] + ([] if self.embedded_worker else ["--no-worker"])
            self.process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=die_with_parent)
        try:
            self._wait_ready()
            yield self
        finally:
            self.stop()

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the service was not ready in {timeout}s:\n{self.log()}")

    def start_worker(self, data_dir: Path | None = None) -> subprocess.Popen:
        """A separate real worker (main process + pool child) in its own process group; with
        ``data_dir``, one with a disk of its own, as on another machine."""
        env = {**self.env, "FT_DATA_DIR": str(data_dir)} if data_dir else self.env
        with open(self.log_path, "ab") as log:
            worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
        self.workers.append(worker)
        return worker

    @staticmethod
    def kill_worker(worker: subprocess.Popen) -> None:
        """kill -9 of the worker and its pool child: no chance to clean up, as in a machine crash."""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()

    def stop(self) -> None:
        self.stop_workers()
        self.stop_api()

    def stop_workers(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)

    def stop_api(self) -> None:
        """Stops `finetune serve` (and the worker it embeds, if any), as Ctrl-C would."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # what Ctrl-C does: API and worker stop together
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20_000:]

    def cli(self, *args: str) -> str:
        """Runs an operator command (`finetune …`) against this stack's database; returns what it printed."""
        done = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"finetune {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done.stdout

    def api_rss(self) -> int:
        """Resident memory of the API process (`finetune serve` runs uvicorn in its own process), in bytes."""
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key or self.key}"}, timeout=120)

    def wait_for_job(self, job_id: str, timeout: float = 300, until=lambda job: job["status"] in TERMINAL,
                     key: str | None = None) -> dict:
        deadline = time.monotonic() + timeout
        with self.client(key) as c:
            while time.monotonic() < deadline:
                job = c.get(f"/v1/fine_tuning/jobs/{job_id}").json()
                if until(job):
                    return job
                time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not reach the state in {timeout}s; last {job}\n{self.log()}")

    def events(self, job_id: str, key: str | None = None) -> list[dict]:
        """Every event of the job, oldest first."""
        with self.client(key) as c:
            return c.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()["data"][::-1]
