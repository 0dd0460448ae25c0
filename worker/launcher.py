"""Runs the training core in several processes at once (data-parallel) under ``accelerate launch``:
one process per GPU, or per CPU slot with the gloo backend where there is no GPU.

The processes stay free of the database and of Celery, as the core is. The first process reports
through files in the job's work folder (one JSON line per report, a flag file for stop requests);
the worker process that launched them relays both ways through its own reporter."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from worker.callbacks import NullReporter, Reporter

REPORTS = "reports.jsonl"
STOP_FLAG = "stop"
OUTCOME = "outcome.json"
OUT_OF_MEMORY = "out_of_memory"  # written by a process that ran out of GPU memory
PROCESS_LOG = "processes.log"


class FileReporter:
    """The first process's reporter: appends reports to a file and reads stop requests from another."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._out = open(folder / REPORTS, "a", encoding="utf-8")

    def _write(self, kind: str, **fields: Any) -> None:
        self._out.write(json.dumps({"kind": kind, **fields}, default=str) + "\n")
        self._out.flush()

    def progress(self, progress, metrics=None):
        self._write("progress", progress=progress, metrics=metrics)

    def event(self, message, *, level="info", type="message", data=None):
        self._write("event", message=message, level=level, type=type, data=data)

    def should_stop(self):
        flag = self.folder / STOP_FLAG
        return flag.read_text().strip() or None if flag.exists() else None

    def checkpoint(self, step, epoch, path, metrics):
        self._write("checkpoint", step=step, epoch=epoch, path=path, metrics=metrics)

    def hyperparameters(self, resolved):
        self._write("hyperparameters", resolved=resolved)

    def baseline(self, metric, metrics, note):
        self._write("baseline", metric=metric, metrics=metrics, note=note)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gpus_visible() -> int:
    import torch

    return torch.cuda.device_count()  # reads the driver only; no CUDA context in this process


def launch(spec, train_file, valid_file, output_dir: Path, reporter: Reporter, work_dir: Path,
           progress_interval_s: float, devices: int):
    """``train(...)`` across ``devices`` processes; returns its TrainingOutcome. When a process runs
    out of GPU memory, all of them are restarted from the newest checkpoint with half the per-device
    batch and twice the accumulation, as a single-process job retries in place."""
    from worker.training import TrainingError, TrainingOutcome, halve_batch, latest_checkpoint

    gpus = gpus_visible()
    if gpus and devices > gpus:
        # Jobs are routed by device count (worker.celery_app.job_queue); this is a worker that offers
        # more GPUs than it has.
        raise TrainingError("not_enough_devices", f"The job asks for {devices} devices but the worker that took it "
                            f"has {gpus} GPUs; its FT_WORKER_DEVICES is set higher than that. Lower "
                            "hyperparameters.devices, or fix the worker's FT_WORKER_DEVICES.")
    folder = work_dir / "launch"
    folder.mkdir(parents=True, exist_ok=True)
    with _Relay(folder, reporter, progress_interval_s) as relay:
        while True:
            returncode = _run_processes(spec, train_file, valid_file, output_dir, work_dir, progress_interval_s,
                                        devices, folder)
            relay.flush()
            outcome_path = folder / OUTCOME
            result = json.loads(outcome_path.read_text()) if outcome_path.exists() else None
            if result and "error" in result:
                raise TrainingError(result["error"]["code"], result["error"]["message"])
            if result is not None and (returncode == 0 or result.get("stopped")):
                # A stop was agreed by every process at one step (a pause's checkpoint is written by
                # then), so the first process's outcome stands even if another one then exited badly.
                return TrainingOutcome(**result)
            if not (folder / OUT_OF_MEMORY).exists() or relay.resolved is None:
                tail = (folder / PROCESS_LOG).read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{devices} training processes exited with status {returncode}: …{tail}")
            hyperparameters = dict(relay.resolved)
            halve_batch(hyperparameters, reporter)
            split = {key: hyperparameters[key] for key in ("per_device_batch_size", "gradient_accumulation_steps")}
            spec = dataclasses.replace(spec, hyperparameters={**spec.hyperparameters, **split},
                                       resume_from=latest_checkpoint(spec.checkpoint_dir) or spec.resume_from)


def _run_processes(spec, train_file, valid_file, output_dir: Path, work_dir: Path, progress_interval_s: float,
                   devices: int, folder: Path) -> int:
    for leftover in (OUTCOME, OUT_OF_MEMORY):
        (folder / leftover).unlink(missing_ok=True)
    (folder / "job.json").write_text(json.dumps({
        "spec": dataclasses.asdict(spec), "train_file": dataclasses.asdict(train_file),
        "valid_file": dataclasses.asdict(valid_file) if valid_file else None, "output_dir": str(output_dir),
        "work_dir": str(work_dir), "progress_interval_s": progress_interval_s}, default=str))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(devices),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "worker.launcher", str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // devices))}
    # prometheus_client would give every metric of these processes a file named by their pid (so, new files
    # for every job); they write theirs only once configured, under their slot (worker/metrics.py).
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(folder / PROCESS_LOG, "ab") as log:
        return subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)


class _Relay:
    """Forwards the first process's reports to the worker's reporter, and stop requests back."""

    def __init__(self, folder: Path, reporter: Reporter, interval_s: float):
        self.folder, self.reporter, self.interval_s = folder, reporter, max(0.2, min(1.0, interval_s))
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="launch-relay", daemon=True)
        self._offset = 0
        self._lock = threading.Lock()
        self.resolved: dict[str, Any] | None = None  # the hyperparameters the processes last trained with

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            self.flush()
            request = self.reporter.should_stop()
            if request:
                (self.folder / STOP_FLAG).write_text(request)

    def flush(self) -> None:
        """Forwards whatever the processes wrote since the last look."""
        path = self.folder / REPORTS
        if not path.exists():
            return
        with self._lock, open(path, encoding="utf-8") as fh:
            fh.seek(self._offset)
            for line in fh:
                if not line.endswith("\n"):
                    break  # half-written: read it whole next time
                self._offset += len(line.encode("utf-8"))
                report = json.loads(line)
                kind = report.pop("kind")
                if kind == "hyperparameters":
                    self.resolved = report["resolved"]
                if kind == "event":
                    self.reporter.event(report.pop("message"), **report)
                else:
                    getattr(self.reporter, kind)(**report)


def _main(folder: Path) -> None:
    """One of the launched processes."""
    from app.data.limits import ScanLimits
    from worker.preparation import DataFile
    from worker.training import TrainingError, TrainingSpec, is_out_of_memory, train

    job = json.loads((folder / "job.json").read_text())
    spec_fields = job["spec"]
    for key in ("checkpoint_dir", "resume_from", "token_cache_dir", "init_adapter", "tensorboard_dir"):
        spec_fields[key] = Path(spec_fields[key]) if spec_fields.get(key) else None
    spec = TrainingSpec(**spec_fields)
    files = [DataFile(**{**f, "path": Path(f["path"]), "limits": ScanLimits(**f["limits"])}) if f else None
             for f in (job["train_file"], job["valid_file"])]
    first = int(os.environ.get("RANK", "0")) == 0
    reporter = FileReporter(folder) if first else NullReporter()
    try:
        outcome = train(spec, files[0], files[1], Path(job["output_dir"]), reporter, work_dir=Path(job["work_dir"]),
                        progress_interval_s=job["progress_interval_s"])
        result: dict[str, Any] = dataclasses.asdict(outcome)
    except TrainingError as exc:
        result = {"error": {"code": exc.code, "message": exc.message}}
    except Exception as exc:
        if is_out_of_memory(exc):
            (folder / OUT_OF_MEMORY).write_text(os.environ.get("RANK", "0"))
        raise
    if first:
        (folder / OUTCOME).write_text(json.dumps(result, default=str))
    if "error" not in result:  # an error may be one process's alone: no one would come to the barrier
        _leave_together()


def _leave_together() -> None:
    """Every process waits for the others before it exits: one that left first would close its
    connections under another still finishing its last collective call, which then fails."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
