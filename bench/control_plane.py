"""Control-plane speed (issue 17): read routes under load, and what idle event-stream followers cost.

Starts `finetune serve --no-worker` (no Celery worker: only the API is measured, and the job it creates
stays queued, so its event stream stays open) on a fresh data folder, once on SQLite (the embedded
default) and once on PostgreSQL (127.0.0.1:5432, user root, a temporary database), creates a file and a
job, then measures:

* requests/s and p50/p99 latency of job GET, job list, file GET and the events list, with `wrk`
  (16 connections, 10 s each; a Python load generator if wrk is not installed — it then competes with
  the API for the same cores);
* 1,000 SSE followers of the job held open for 10 s: the API processes' CPU (psutil), and on
  PostgreSQL the database's transactions meanwhile; then the job is cancelled, and the time until every
  follower has the terminal event.

Goals: ≥ 1,500 job GETs/s with p99 < 50 ms on PostgreSQL; 1,000 idle followers < 5 % of a core;
events at every follower within 100 ms.

    python -m bench.control_plane                   # both databases (PostgreSQL if reachable)
    python -m bench.control_plane --only sqlite --followers 200
    python -m bench.control_plane --uploads         # also bench.upload_speed (400 MB CSV and JSONL), if present
    python -m bench.control_plane --repo /tmp/old   # the same measurements of another checkout (before/after)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = "host=127.0.0.1 port=5432 user=root dbname=test connect_timeout=3"
GOAL_JOB_GETS_PER_S, GOAL_P99_MS, GOAL_IDLE_CORE_PCT, GOAL_DELIVERY_MS = 1500, 50, 5.0, 100


@contextmanager
def postgres_database():
    import psycopg

    name = f"ft_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name, f"postgresql+psycopg://root@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_reachable() -> bool:
    try:
        import psycopg

        psycopg.connect(PG_ADMIN).close()
        return True
    except Exception:
        return False


@contextmanager
def service(repo: Path, root: Path, base_models: Path, database_url: str | None, workers: int | None, key: str):
    from tests.support.live import free_port

    port = free_port()
    env = {**os.environ, "FT_DATA_DIR": str(root / "data"), "FT_BASE_MODELS_DIR": str(base_models),
           "FT_BUNDLED_MODELS": "false", "FT_BOOTSTRAP_API_KEY": key, "FT_API_PORT": str(port),
           "FT_QUOTA_EVENT_STREAMS": "100000", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("FT_DATABASE_URL", None)
    env.pop("FT_BROKER_URL", None)
    if database_url:
        env["FT_DATABASE_URL"] = database_url
    if workers:
        env["FT_API_WORKERS"] = str(workers)
    log = open(root / "serve.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--no-worker"], cwd=repo, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "serve.log").read_text()[-3000:])
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url, process
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def seed(url: str, key: str) -> tuple[str, str]:
    """A file and a queued job (no worker takes it)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        dataset = (REPO / "examples" / "sentiment.csv").read_bytes()
        upload = c.post("/v1/files", files={"file": ("sentiment.csv", dataset)}, data={"purpose": "fine-tune"})
        upload.raise_for_status()
        job = c.post("/v1/fine_tuning/jobs", json={"model": "tiny/bert", "training_file": upload.json()["id"],
                                                   "hyperparameters": {"n_epochs": 1}})
        job.raise_for_status()
        return upload.json()["id"], job.json()["id"]


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def load(url: str, key: str, seconds: float, connections: int, process: subprocess.Popen) -> dict:
    """requests/s, p50 and p99 (ms) of GET ``url``, the API's CPU time per request (ms), and the busiest
    API process's share of that CPU (1/N when the processes share the load evenly)."""
    before = _cpu_by_process(process)
    result = _wrk(url, key, seconds, connections) if shutil.which("wrk") else \
        asyncio.run(_python_load(url, key, seconds, connections))
    after = _cpu_by_process(process)
    spent = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    total = sum(spent.values())
    result["cpu_ms_per_request"] = total * 1000 / max(result.pop("requests"), 1)
    workers = [cpu for pid, cpu in spent.items() if pid != process.pid] or [total]
    result["busiest_share"] = max(workers) / total if total else 0.0
    return result


def _wrk(url: str, key: str, seconds: float, connections: int) -> dict:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-H",
                          f"Authorization: Bearer {key}", url], capture_output=True, text=True, check=True).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            # The latency distribution's lines, not the "+/- Stdev" column (which may read "90.50%").
            "p50_ms": _ms(re.search(r"^\s+50%\s+(\S+)$", out, re.M).group(1)),
            "p99_ms": _ms(re.search(r"^\s+99%\s+(\S+)$", out, re.M).group(1)),
            "errors": int(non_2xx.group(1)) if non_2xx else 0, "tool": "wrk"}


async def _python_load(url: str, key: str, seconds: float, connections: int) -> dict:
    latencies, errors = [], 0
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=30) as client:
        deadline = time.monotonic() + seconds

        async def one_connection():
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = await client.get(url)
                latencies.append((time.perf_counter() - started) * 1000)
                errors += response.status_code != 200

        await asyncio.gather(*(one_connection() for _ in range(connections)))
    cuts = statistics.quantiles(latencies, n=100)
    return {"rps": len(latencies) / seconds, "requests": len(latencies), "p50_ms": cuts[49], "p99_ms": cuts[98],
            "errors": errors, "tool": "httpx"}


def api_cpu_seconds(process: subprocess.Popen) -> float:
    """CPU time of `finetune serve` and its uvicorn workers."""
    return sum(_cpu_by_process(process).values())


def _cpu_by_process(process: subprocess.Popen) -> dict[int, float]:
    root = psutil.Process(process.pid)
    spent = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            spent[proc.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return spent


class Follower:
    """One SSE client on a raw socket (an httpx client per stream would cost the load generator more
    than the server); records when each event id arrived."""

    def __init__(self):
        self.ids: dict[int, float] = {}
        self.ended = False

    async def run(self, host: str, port: int, path: str, key: str, opened: asyncio.Semaphore) -> None:
        async with opened:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                         "Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                raise RuntimeError(head.decode(errors="replace"))
        buffer = b""
        try:
            while chunk := await reader.read(65536):
                now = time.monotonic()
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.startswith(b"id: "):
                        self.ids.setdefault(int(line[4:].strip()), now)
        finally:
            self.ended = True
            writer.close()


async def _followers(url: str, key: str, job_id: str, n: int, hold_s: float, process, database: str | None):
    host, port = url.removeprefix("http://").split(":")
    path = f"/v1/fine_tuning/jobs/{job_id}/events?stream=true"
    followers = [Follower() for _ in range(n)]
    opened = asyncio.Semaphore(64)
    tasks = [asyncio.create_task(f.run(host, int(port), path, key, opened)) for f in followers]
    deadline = time.monotonic() + 120
    while not all(len(f.ids) >= 2 for f in followers):  # the job's first two events, replayed
        if any(t.done() and t.exception() for t in tasks):
            raise next(t.exception() for t in tasks if t.done() and t.exception())
        assert time.monotonic() < deadline, "the followers did not all get the replay"
        await asyncio.sleep(0.1)
    # Let the replay's work settle; PostgreSQL publishes a backend's counters up to 10 s late.
    await asyncio.sleep(11 if database else 1)
    transactions = _pg_transactions(database)
    cpu_before, started = api_cpu_seconds(process), time.monotonic()
    await asyncio.sleep(hold_s)
    idle_pct = (api_cpu_seconds(process) - cpu_before) / (time.monotonic() - started) * 100
    transactions_per_s = ((_pg_transactions(database) - transactions) / hold_s) if database else None
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        sent = time.monotonic()
        (await client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")).raise_for_status()
        answered = time.monotonic()  # the cancel (and its event) committed before the answer was sent
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)
    last = max(max(f.ids) for f in followers)
    arrivals = sorted(f.ids[last] for f in followers if last in f.ids)
    return {"followers": n, "idle_cpu_pct_of_a_core": idle_pct, "pg_transactions_per_s": transactions_per_s,
            "delivered": len(arrivals), "cancel_request_ms": (answered - sent) * 1000,
            "delivery_p50_ms": (statistics.median(arrivals) - answered) * 1000,
            "delivery_max_ms": (arrivals[-1] - answered) * 1000,
            "delivery_max_from_request_ms": (arrivals[-1] - sent) * 1000}


def _pg_transactions(database: str | None) -> int:
    if not database:
        return 0
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                            (database,)).fetchone()[0]


def measure(repo: Path, backend: str, args, base_models: Path) -> dict:
    key = f"sk-bench-{uuid.uuid4().hex}"
    root = Path(tempfile.mkdtemp(prefix=f"control-plane-{backend}-"))
    with (postgres_database() if backend == "postgresql" else _no_database()) as (database, database_url), \
            service(repo, root, base_models, database_url, args.api_workers.get(backend), key) as (url, process):
        file_id, job_id = seed(url, key)
        routes = {"job GET": f"/v1/fine_tuning/jobs/{job_id}", "job list": "/v1/fine_tuning/jobs",
                  "file GET": f"/v1/files/{file_id}", "events list": f"/v1/fine_tuning/jobs/{job_id}/events"}
        load(url + routes["job GET"], key, 2, args.connections, process)  # warm up
        results = {name: load(url + path, key, args.seconds, args.connections, process)
                   for name, path in routes.items()}
        children = psutil.Process(process.pid).children()
        workers = sum("spawn_main" in " ".join(child.cmdline()) for child in children) or 1  # uvicorn's workers
        streams = asyncio.run(_followers(url, key, job_id, args.followers, args.hold, process, database)) \
            if args.followers else None
        shutil.rmtree(root, ignore_errors=True)
        return {"backend": backend, "api_processes": workers, "routes": results, "streams": streams}


@contextmanager
def _no_database():
    yield None, None


def report(result: dict) -> str:
    lines = [f"{result['backend']} ({result['api_processes']} API process(es))",
             f"  {'route':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'API CPU ms/req':>16}"
             f"{'busiest process':>17}"]
    for name, r in result["routes"].items():
        lines.append(f"  {name:<12}{r['rps']:>9.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['errors']:>9}"
                     f"{r['cpu_ms_per_request']:>16.2f}{r['busiest_share']:>16.0%}  ({r['tool']})")
    s = result["streams"]
    if s is None:
        lines.append("  followers: not measured (--followers 0)")
    else:
        lines.extend(_stream_lines(s))
    if result["backend"] == "postgresql":
        job = result["routes"]["job GET"]
        met = job["rps"] >= GOAL_JOB_GETS_PER_S and job["p99_ms"] < GOAL_P99_MS
        lines.append(f"  goal ≥ {GOAL_JOB_GETS_PER_S} job GETs/s with p99 < {GOAL_P99_MS} ms: "
                     f"{'met' if met else 'NOT met'}")
    return "\n".join(lines)


def _stream_lines(s: dict) -> list[str]:
    lines = []
    pg = "" if s["pg_transactions_per_s"] is None else \
        f", PostgreSQL {s['pg_transactions_per_s']:.1f} transactions/s"
    lines.append(f"  {s['followers']} idle followers: {s['idle_cpu_pct_of_a_core']:.1f} % of a core{pg}")
    lines.append(f"  job cancelled ({s['cancel_request_ms']:.0f} ms request): its event at {s['delivered']} followers "
                 f"p50 {s['delivery_p50_ms']:.0f} ms, max {s['delivery_max_ms']:.0f} ms after the answer "
                 f"(max {s['delivery_max_from_request_ms']:.0f} ms after the request was sent)")
    idle_met, delivery_met = s["idle_cpu_pct_of_a_core"] < GOAL_IDLE_CORE_PCT, s["delivery_max_ms"] < GOAL_DELIVERY_MS
    lines.append(f"  goal idle followers < {GOAL_IDLE_CORE_PCT:g} % of a core: {'met' if idle_met else 'NOT met'}; "
                 f"delivery < {GOAL_DELIVERY_MS} ms (max): {'met' if delivery_met else 'NOT met'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--seconds", type=float, default=10.0, help="per route (default 10)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=10.0, help="seconds the followers are held idle")
    parser.add_argument("--sqlite-workers", type=int, help="FT_API_WORKERS on SQLite (default: serve's choice, 1)")
    parser.add_argument("--postgresql-workers", type=int, default=min(len(os.sched_getaffinity(0)), 4),
                        help="FT_API_WORKERS on PostgreSQL (default: what `finetune api` chooses, min(cores, 4))")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to run (default: this one)")
    parser.add_argument("--uploads", action="store_true", help="also run bench.upload_speed, if it exists")
    parser.add_argument("--upload-mb", type=int, default=400)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.api_workers = {"sqlite": args.sqlite_workers, "postgresql": args.postgresql_workers}

    from tests.support.tiny_models import build_tiny_bert

    base_models = Path(tempfile.mkdtemp(prefix="control-plane-models-"))
    build_tiny_bert(base_models / "tiny" / "bert")
    backends = [args.only] if args.only else ["sqlite", "postgresql"]
    if "postgresql" in backends and not postgres_reachable():
        print("PostgreSQL is not reachable on 127.0.0.1:5432: measuring SQLite only.")
        backends.remove("postgresql")
    for backend in backends:
        try:
            result = measure(args.repo.resolve(), backend, args, base_models)
        except Exception as exc:  # one backend failing still leaves the other's figures
            print(f"{backend}: failed: {exc!r}", flush=True)
            continue
        print(json.dumps(result, indent=2) if args.json else report(result), flush=True)
    if args.uploads:
        import importlib.util

        if importlib.util.find_spec("bench.upload_speed") is None:
            print("bench.upload_speed is not there: no upload figures.")
        else:
            from bench import upload_speed

            print(upload_speed.report(upload_speed.run(args.upload_mb)))


if __name__ == "__main__":
    main()
