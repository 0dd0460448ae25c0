"""Upload speed (issue 17): how fast a large CSV and JSONL go from request sent to file object returned,
and how much the API's memory grows meanwhile, against the goals (≥ 100 MB/s, RSS growth < 200 MB).

    python -m bench.upload_speed              # 400 MB of each, against a fresh `finetune serve`
    python -m bench.upload_speed --mb 50      # a quicker look

Other benchmarks import :func:`measure_upload` (one upload against a running service) and
:func:`generate_dataset` (a CSV or JSONL of about N bytes, realistic enough: varied words, quoted
commas, a label column)."""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

GOAL_MB_PER_S = 100.0
GOAL_RSS_GROWTH_MB = 200.0
MB = 1_000_000

_WORDS = ("the a film movie plot actor scene great awful boring fine slow fast story music ending twist "
          "character dialogue funny sad long short brilliant weak strong visual script cast director "
          "moment hour minute watch again never always really quite rather").split()
_LABELS = ("positive", "negative", "neutral")


@dataclass
class UploadResult:
    format: str
    bytes: int
    seconds: float
    mb_per_s: float
    rss_growth_mb: float
    status: str
    rows: int | None

    def meets_goals(self) -> bool:
        return self.mb_per_s >= GOAL_MB_PER_S and self.rss_growth_mb < GOAL_RSS_GROWTH_MB


def generate_dataset(path: Path, fmt: str, target_bytes: int, seed: int = 17) -> int:
    """Write a `fmt` ("csv" or "jsonl") dataset of about `target_bytes` (text, label); returns its rows.
    A pool of distinct rows is drawn from at random, so writing 400 MB takes seconds, not minutes."""
    rng = random.Random(seed)
    pool = []
    for i in range(20_000):
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 16)))
        if i % 7 == 0:
            text += ", and yet " + rng.choice(_WORDS)  # a quoted comma in CSV
        label = _LABELS[i % 3]
        if fmt == "csv":
            pool.append((f'"{text}"' if "," in text else text) + f",{label}\n")
        else:
            pool.append(json.dumps({"text": text, "label": label}) + "\n")
    rows, written = 0, 0
    with open(path, "w", encoding="utf-8", newline="") as out:
        if fmt == "csv":
            written += out.write("text,label\n")
        while written < target_bytes:
            block = "".join(rng.choices(pool, k=10_000))
            written += len(block)
            rows += 10_000
            out.write(block)
    return rows


class _PeakRss:
    """The highest resident memory of a process while the block runs, sampled every 20 ms."""

    def __init__(self, pid: int):
        import psutil

        self.process = psutil.Process(pid)
        self.before = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> "_PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.before) / MB


def measure_upload(base_url: str, key: str, path: Path, api_pid: int, fmt: str | None = None) -> UploadResult:
    """Upload `path` (streamed from disk by httpx) and time it from the request sent to the file object
    returned; the API process's peak RSS growth is sampled meanwhile."""
    size = path.stat().st_size
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client, \
            open(path, "rb") as fh, _PeakRss(api_pid) as rss:
        started = time.perf_counter()
        response = client.post("/v1/files", files={"file": (path.name, fh, "application/octet-stream")},
                               data={"purpose": "fine-tune"})
        seconds = time.perf_counter() - started
    response.raise_for_status()
    body = response.json()
    return UploadResult(format=fmt or body.get("format") or path.suffix.lstrip("."), bytes=size, seconds=seconds,
                        mb_per_s=size / MB / seconds, rss_growth_mb=rss.growth_mb, status=body["status"],
                        rows=body.get("rows"))


def run(megabytes: int = 400, workdir: Path | None = None) -> list[UploadResult]:
    """A fresh `finetune serve` in a temporary folder; one upload of each format of `megabytes` MB."""
    from bench.service import start_service
    from tests.support.live import free_port

    data_dir = Path(tempfile.mkdtemp(prefix="upload-speed-"))
    workdir = workdir or Path(tempfile.gettempdir())
    key, port = f"sk-bench-{uuid.uuid4().hex}", free_port()
    inputs = []
    for fmt in ("csv", "jsonl"):
        path = workdir / f"upload_speed_{megabytes}mb.{fmt}"
        if not path.exists() or path.stat().st_size < megabytes * MB:
            generate_dataset(path, fmt, megabytes * MB)
        inputs.append((fmt, path))
    process = start_service(data_dir, port, key)
    try:
        _wait_until_quiet(process.pid)  # the embedded worker boots (imports torch) after the API is ready
        # A small upload of each format first: imports and first-use allocations, as in an API that has
        # been running.
        for name, text in (("warm.csv", "text,label\ngood,positive\nbad,negative\n"),
                           ("warm.jsonl", '{"text": "good", "label": "positive"}\n')):
            (data_dir / name).write_text(text)
            measure_upload(f"http://127.0.0.1:{port}", key, data_dir / name, process.pid)
        return [measure_upload(f"http://127.0.0.1:{port}", key, path, process.pid, fmt) for fmt, path in inputs]
    finally:
        import os
        import signal

        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=40)
        except Exception:
            os.killpg(process.pid, signal.SIGKILL)


def _wait_until_quiet(pid: int, timeout_s: float = 120.0) -> None:
    """Until the service's processes together use less than a tenth of a core for a second."""
    import psutil

    root = psutil.Process(pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        processes = [root, *root.children(recursive=True)]
        for process in processes:
            process.cpu_percent(None)
        time.sleep(1.0)
        busy = 0.0
        for process in processes:
            try:
                busy += process.cpu_percent(None)
            except psutil.NoSuchProcess:
                pass
        if busy < 10.0:
            return


def report(results: list[UploadResult]) -> str:
    lines = [f"{'format':<7}{'MB':>8}{'seconds':>9}{'MB/s':>8}{'RSS +MB':>9}  status     rows        goals "
             f"(≥ {GOAL_MB_PER_S:g} MB/s, < {GOAL_RSS_GROWTH_MB:g} MB)"]
    for r in results:
        lines.append(f"{r.format:<7}{r.bytes / MB:>8.0f}{r.seconds:>9.2f}{r.mb_per_s:>8.1f}{r.rss_growth_mb:>9.1f}  "
                     f"{r.status:<10} {r.rows!s:<11} {'met' if r.meets_goals() else 'NOT met'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=400, help="size of each generated file, in MB (default 400)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    results = run(args.mb)
    print(json.dumps([asdict(r) for r in results], indent=2) if args.json else report(results))


if __name__ == "__main__":
    main()
